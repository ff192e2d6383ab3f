# What tests/test_architecture.py must find: one object reaching into another's private attributes.
class Installer:
    def install(self, handle, other):
        self._mine = 1  # its own: fine
        handle._hooked = {}
        return other._prepare(True)
