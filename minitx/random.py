"""minitx's random number generators: one per device, seeded together by `manual_seed`.

Initialisation, dropout and sampling all draw from here, so one seed makes a run repeatable,
and `get_rng_state`/`set_rng_state` let a checkpoint resume the exact same stream.
NumPy's and CuPy's `Generator` share one interface (`standard_normal`, `random`, ...).
"""
from . import backend

_seed = None
_seeds = {}        # device -> the seed its generator restarts from, where not the manual seed
_generators = {}


def manual_seed(seed):
    """Seed the generators of every device."""
    global _seed
    _seed = int(seed)
    _seeds.clear()
    _generators.clear()


def generator(device="cpu"):
    """The random generator for `device` (numpy.random.Generator or cupy.random.Generator)."""
    if device not in _generators:
        xp = backend.array_module(device)
        _generators[device] = xp.random.default_rng(_seeds.get(device, _seed))
    return _generators[device]


def normal_array(shape, dtype, device):
    return generator(device).standard_normal(shape, dtype=dtype)


def uniform_array(shape, dtype, device):
    return generator(device).random(shape, dtype=dtype)


def random_seed():
    """A fresh integer in [0, 2^63) from the CPU generator: the seed of a counter-based stream
    (the attention-dropout mask, recomputed from it in backward)."""
    return int(generator("cpu").integers(0, 2**63))


def get_rng_state():
    """The generators' states as plain JSON-serialisable data (for checkpoints).

    NumPy's state is exported as it is. CuPy's generator cannot export its state, so when it is
    in use a fresh seed is drawn from the CPU generator, the CUDA generator restarts from that
    seed, and the checkpoint keeps the seed: the run that goes on and a run resumed from this
    checkpoint then draw the same dropout masks (not those of step 0 again).
    """
    state = {}
    if "cuda" in _generators:
        state["cuda_seed"] = _seeds["cuda"] = int(generator("cpu").integers(2**63))
        del _generators["cuda"]                  # restarts from the new seed on next use
    state["cpu"] = generator("cpu").bit_generator.state
    return state


def set_rng_state(state):
    generator("cpu").bit_generator.state = state["cpu"]
    if "cuda_seed" in state:
        _seeds["cuda"] = state["cuda_seed"]
        _generators.pop("cuda", None)
