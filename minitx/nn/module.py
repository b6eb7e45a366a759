"""Module and Parameter: how layers hold their weights and find each other's.

A Module's attributes that are Parameters, Modules or lists of Modules are found by walking
`vars(self)`, so a layer only assigns them (`self.weight = Parameter(...)`,
`self.blocks = [Block(...), ...]`) and needs no registration. A Parameter
shared by two modules (tied embeddings, shared layers) is listed once.
"""
import numpy

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor that a Module trains: requires_grad is always on."""
    __slots__ = ()

    def __init__(self, data, dtype=None, device=None):
        super().__init__(data, requires_grad=True, dtype=dtype, device=device)


class Module:
    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    # --- walking the tree of modules ---------------------------------------------------------------
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) for every parameter below this module, each one once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            path, module = stack.pop(0)
            for name, value in vars(module).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield path + name, value
            for name, child in module.named_children():
                stack.append((f"{path}{name}.", child))

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        out, stack = [], [self]
        while stack:
            module = stack.pop(0)
            out.append(module)
            stack.extend(child for _, child in module.named_children())
        return out

    def n_params(self):
        return sum(p.size for p in self.parameters())

    # --- modes, gradients, devices ------------------------------------------------------------------
    def train(self, mode=True):
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, device=None, dtype=None):
        """Move (or cast) every parameter in place; returns self."""
        for p in self.parameters():
            if device is not None:
                p.data = backend.move_array(p.data, backend.check_device(device))
            if dtype is not None:
                p.data = p.data.astype(backend.to_dtype(dtype))
            p.grad = None
        return self

    # --- saving and loading --------------------------------------------------------------------------
    def state_dict(self):
        """{name: NumPy array} of every parameter (copies, on the CPU)."""
        return {name: p.numpy().copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy arrays into the parameters; names and shapes must match exactly."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state dict does not fit this model: missing {missing}, unexpected {unexpected}")
        for name, p in own.items():
            value = numpy.asarray(state[name])
            if value.shape != p.shape:
                raise ValueError(f"state dict entry {name!r} has shape {value.shape}, the model's {p.shape}")
            p.data = backend.move_array(value.astype(p.dtype), p.device)

