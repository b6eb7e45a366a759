"""cupy.cuda of the stand-in: one emulated device, always in step with the host."""


class runtime:
    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def getDeviceProperties(device):
        return {"name": b"cupy stand-in (CPU emulation)"}


class Device:
    def __init__(self, device=0):
        self.id = device

    def synchronize(self):
        """Nothing to wait for: every stand-in operation has finished when it returns."""
