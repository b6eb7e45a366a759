"""Reverse-mode automatic differentiation: the graph and its backward walk.

Every op is a `Function` with two static methods on raw arrays:

    forward(ctx, *arrays, **params) -> array         # saves what backward needs on ctx
    backward(ctx, grad) -> one gradient per input    # None where an input needs none

`Function.apply` runs forward on the inputs' arrays and, when some input requires a gradient,
records a `Node` (the ctx) on the output tensor: which op made it, from which inputs.
`backward(root)` walks those nodes from the root back to the leaves in reverse topological
order, hands each node the gradient of its output, and sums what comes back per input.
A node also records the version of each input tensor (tensor.py: the count of in-place
changes), and backward refuses a node whose inputs or output changed since the forward pass.
Broadcasting is undone here, once, for every op: a gradient that arrives in a broadcast shape
is summed back to its input's shape by `unbroadcast`.
"""
import numpy

from . import backend, precision

_grad_enabled = True


class no_grad:
    """Context manager (and decorator) that stops ops from recording the graph."""

    def __enter__(self):
        global _grad_enabled
        self.previous, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self.previous

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


def is_grad_enabled():
    return _grad_enabled


class Node:
    """What backward needs to know about one op application; also the `ctx` its methods see.

    `inputs` are the op's positional inputs (Tensors or constants), `needs_grad[i]` says whether
    input i wants a gradient, and forward may store anything else as attributes of ctx.
    `policy` is the precision policy the op ran under (None: float32 as written).
    """
    policy = None

    def __init__(self, fn, inputs, needs_grad):
        self.fn, self.inputs, self.needs_grad = fn, inputs, needs_grad
        self.freed = False

    def free(self):
        """Drop the saved arrays and the links to the inputs, so memory can be reclaimed."""
        fn = self.fn
        self.__dict__.clear()
        self.fn, self.inputs, self.freed = fn, (), True


class Function:
    """Base class of every differentiable op (see the module docstring)."""

    @staticmethod
    def forward(ctx, *arrays, **params):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        needs_grad = tuple(isinstance(x, Tensor) and x.requires_grad for x in inputs)
        record = _grad_enabled and any(needs_grad)
        if backend.cupy is not None:
            inputs = _on_one_device(cls, inputs)
        ctx = Node(cls, inputs, needs_grad)
        arrays = [x.data if isinstance(x, Tensor) else x for x in inputs]
        policy = precision.current()
        try:
            if policy is None:
                out = cls.forward(ctx, *arrays, **params)
            else:  # rounds the inputs and the output (precision.py)
                out = policy.forward(ctx, arrays, params)
        except ValueError as error:  # name the op and the shapes, whatever numpy said
            shapes = ", ".join(str(getattr(a, "shape", type(a).__name__)) for a in arrays)
            raise ValueError(f"{cls.__name__.lower()}: {error} (input shapes: {shapes})") from None
        if record:
            ctx.versions = _versions(inputs)
        return Tensor._make(out, record, ctx if record else None)


def _versions(inputs):
    return tuple(x._version if isinstance(x, Tensor) else None for x in inputs)


def _check_unchanged(tensor, node):
    """Refuse to back-propagate through `node` (which made `tensor`) if the op's inputs or its
    output were changed in place after the forward pass: its saved values are stale."""
    now = _versions(node.inputs)
    if now == node.versions and tensor._version == 0:
        return
    changed = [f"input {i}" for i, (a, b) in enumerate(zip(node.versions, now)) if a != b]
    changed += ["its output"] if tensor._version else []
    raise RuntimeError(
        f"backward through {node.fn.__name__.lower()}: {' and '.join(changed)} changed in place after "
        "the forward pass (an optimizer step or an assignment to .data); run the forward pass again")


def _on_one_device(fn, inputs):
    """`inputs` with every array on the tensors' device, or a RuntimeError naming the op.

    Tensors must already share a device (as in PyTorch). A raw boolean or integer NumPy array
    (a mask, token ids, targets) meeting CUDA tensors is copied to the GPU, since passing those
    from the host is a common habit; any other raw array on the wrong side gets this error
    rather than the array library's bare TypeError.
    """
    devices = {x.device for x in inputs if isinstance(x, Tensor)}
    if len(devices) > 1:
        raise RuntimeError(f"{fn.__name__.lower()}: inputs are on different devices {sorted(devices)}; "
                           "move them to one device with .to(device) first")
    if not devices:
        return inputs
    device = devices.pop()
    moved = []
    for x in inputs:
        if (isinstance(x, Tensor) or not hasattr(x, "shape") or isinstance(x, numpy.generic)
                or backend.device_of(x) == device):
            moved.append(x)
        elif device == "cuda" and x.dtype.kind in "biu":
            moved.append(backend.move_array(x, device))
        else:
            raise RuntimeError(f"{fn.__name__.lower()}: a {backend.device_of(x)} array of {x.dtype} "
                               f"meets tensors on {device!r}; make it a tensor on that device "
                               f"(minitx.tensor(array, device={device!r}))")
    return tuple(moved)


def unbroadcast(grad, shape):
    """Sum `grad` back down to `shape`, undoing NumPy broadcasting (extra leading axes, size-1 axes)."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def topological_order(root):
    """Tensors reachable from `root` that need gradients, inputs before the outputs made from them.

    Iterative depth-first search (no recursion limit); a tensor is emitted once all of its inputs
    have been.
    """
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        tensor, inputs_done = stack.pop()
        if inputs_done:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor._node is not None:
            for x in tensor._node.inputs:
                if isinstance(x, Tensor) and x.requires_grad and id(x) not in visited:
                    stack.append((x, False))
    return order


def backward(root, grad, retain_graph=False):
    """Accumulate d(root)/d(leaf) * grad into the `.grad` of every leaf that requires it."""
    grads = {id(root): grad}
    for tensor in reversed(topological_order(root)):
        g = grads.pop(id(tensor), None)
        if g is None:
            continue
        node = tensor._node
        if node is None:  # a leaf: accumulate across backward calls
            if tensor.grad is None:
                tensor.grad = Tensor._make(g.copy(), False, None)  # a copy: g may be shared
            else:
                tensor.grad.data = tensor.grad.data + g
            continue
        if node.freed:
            raise RuntimeError(
                f"backward through the graph of a {node.fn.__name__.lower()} a second time: its saved "
                "values were freed by the first backward; pass retain_graph=True to the first call")
        _check_unchanged(tensor, node)
        if node.policy is None:
            input_grads = node.fn.backward(node, g)
        else:  # rounds the incoming gradient and the ones returned (precision.py)
            input_grads = node.policy.backward(node, g)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        for x, needs, gx in zip(node.inputs, node.needs_grad, input_grads):
            if not needs or gx is None:
                continue
            gx = unbroadcast(gx, x.data.shape)
            if gx.dtype != x.data.dtype:
                gx = gx.astype(x.data.dtype)
            previous = grads.get(id(x))
            grads[id(x)] = gx if previous is None else previous + gx
        if not retain_graph:
            node.free()


from .tensor import Tensor  # noqa: E402  (Tensor calls back into this module)
