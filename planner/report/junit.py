"""JUnit XML: one testsuite, one testcase per checked file, a failure per problem."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from planner.plan import Problem


def render(problems: list[Problem], files: list[str]) -> str:
    suite = ET.Element("testsuite", name="planner validate", tests=str(len(files)),
                       failures=str(len({p.path for p in problems})), errors="0")
    by_file: dict[str, list[Problem]] = {}
    for p in problems:
        by_file.setdefault(p.path, []).append(p)
    for path in files + [p for p in by_file if p not in files]:
        case = ET.SubElement(suite, "testcase", classname="plan", name=path)
        for p in by_file.get(path, []):
            failure = ET.SubElement(case, "failure", type=p.rule, message=f"{p.rule} {p.text}")
            failure.text = str(p)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"
