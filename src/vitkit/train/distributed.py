"""Data-parallel training across the processes torchrun starts: DDP, or FSDP2 with `--fsdp`.

One `Distributed` object per training run answers every question the loop has about the other
processes. Outside torchrun it is inactive and each method is the identity (or the plain
single-process call), so a single process trains exactly as it would without this module.

Under torchrun:
- every rank builds the same (seed, epoch) order of the training set and takes its part of
  each global batch (`shard`); the loss of each part is weighted so that DDP's (or FSDP's)
  averaging of the gradients gives the mean over the global batch, whatever the world size;
- metrics are summed across ranks at epoch ends and mid-epoch checkpoints; validation is
  split across the ranks and summed (streamed, every rank reads it all), so every rank sees
  the same numbers and takes the same decisions;
- what stops or skips a step (a NaN/inf loss on any rank, a signal to any rank) is decided by
  all ranks together, so that none waits forever for another that has left;
- only rank 0 writes files; checkpoints hold the full, unsharded model and optimiser state in
  the single-process layout, so a run saved with N processes resumes with M;
- rank 0 keeps the single-process random stream (seed, then the checkpointed state); every other
  rank draws from its own stream seeded from (seed, rank, update), so augmentation and dropout
  differ between ranks. A resume restores rank 0's stream from the checkpoint and reseeds the
  others from the update it resumes at, whatever the new world size.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import random
import sys

import numpy as np
import torch
import torch.distributed as dist

from vitkit.errors import CheckpointError, ConfigError, VitkitError
from vitkit.formats import apply_state
from vitkit.models.vit import VisionTransformer

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

# Set when vitkit itself started the process group, so that it also ends it.
_started_here = False


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0 (what prints and writes)."""
    return int(os.environ.get("RANK", "0")) == 0


def owns_process_group() -> bool:
    """Whether vitkit started the running process group (and so ends it after the run)."""
    return _started_here and dist.is_initialized()


def end_process_group() -> None:
    """Destroy the process group if vitkit started it (the end of `vitkit.train.train`), so that
    its threads end here and not in interpreter shutdown (see `Distributed.from_environment`)."""
    global _started_here
    if owns_process_group():
        _forget_device_meshes()
        gc.collect()  # the run's DDP/FSDP objects, which hold the group
        dist.destroy_process_group()
    _started_here = False


def _forget_device_meshes() -> None:
    """Empty DTensor's caches. FSDP2's parameters are DTensors, and DTensor keeps sharding and
    redistribution plans in caches that hold the run's device mesh, and through it the process
    group, which would then outlive destroy_process_group. The run is over; the caches only save
    time. (Private caches of torch 2.13; what another torch lacks is passed over.)"""
    if "torch.distributed.tensor" not in sys.modules:
        return
    for name, module in list(sys.modules.items()):
        if not name.startswith("torch.distributed.tensor") or module is None:
            continue
        for value in list(vars(module).values()):
            members = list(vars(value).values()) if isinstance(value, type) else []
            for item in [value, *members]:
                item = getattr(item, "__func__", item)  # staticmethod
                if isinstance(item, functools._lru_cache_wrapper):  # functools.cache, lru_cache
                    item.cache_clear()
    from torch.distributed.tensor import DTensor

    with contextlib.suppress(AttributeError):
        DTensor._op_dispatcher.sharding_propagator.propagate_op_sharding.cache_clear()
    with contextlib.suppress(AttributeError):
        torch._C._clear_DTensor_sharding_propagator_cache()
    with contextlib.suppress(AttributeError, KeyError):
        sys.modules["torch.distributed.tensor._redistribute"].clear_redistribute_planner_cache()


def rank_seed(seed: int, rank: int, update: int) -> int:
    """The seed of a non-zero rank's random stream, independent of the world size."""
    return int(np.random.SeedSequence([seed, rank, update]).generate_state(1)[0])


class Distributed:
    """The processes of one training run; `Distributed.from_environment()` joins torchrun's."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, active: bool = False):
        self.rank, self.world_size, self.local_rank, self.active = rank, world_size, local_rank, active
        self.tensor_device = torch.device("cpu")  # where the small tensors of decisions live
        self.fsdp = False
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self.sharded: torch.nn.Module | None = None

    @classmethod
    def from_environment(cls) -> "Distributed":
        """Inactive for a plain process; under torchrun, the process group (started here if
        nobody started it) with gloo for CPU tensors and NCCL for CUDA ones."""
        global _started_here
        if not dist.is_available() or not (dist.is_initialized() or launched_by_torchrun()):
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(local_rank)
            # DDP imports torch._dynamo, and that import takes references to the process groups
            # that exist at the time. Such a group outlives destroy_process_group with its gloo
            # threads running into interpreter shutdown, where one of them now and then aborts the
            # process ("terminate called without an active exception", SIGABRT) when it next
            # needs the GIL. Imported before the group exists, it holds none.
            import torch._dynamo as _dynamo  # noqa: F401 (binds no local `torch`)
            # Both backends: the device is read from the run's config, which rank 0 may only
            # know after the group exists (a resumed run's config.yaml).
            dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
            _started_here = True
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, active=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ configuration
    def check(self, cfg, streaming: bool = False) -> None:
        """One-line errors for what cannot work with this launch (`streaming`: from shards)."""
        if cfg.fsdp and not self.active:
            raise ConfigError("--fsdp shards the model across processes started by torchrun; launch "
                              "with `torchrun --nproc_per_node N -m vitkit train ...` or leave out --fsdp")
        if not self.active:
            return
        if cfg.fsdp and cfg.adversarial != "none":
            raise ConfigError("--adversarial with --fsdp: the attack back-propagates to the images inside "
                              "the training step, which FSDP2 takes for the step's own backward and reshards "
                              "the weights before the step is done; use DDP (leave out --fsdp)")
        if cfg.fsdp and cfg.ema > 0:
            raise ConfigError("--ema keeps a full copy of the weights on every process, which --fsdp "
                              "does not; leave out --ema or --fsdp")
        if cfg.fsdp and cfg.skip_nonfinite and cfg.accum_steps > 1:
            raise ConfigError("--skip-nonfinite with --fsdp needs --accum-steps 1: FSDP2 would keep the "
                              "unreduced gradients of an accumulated batch whose last step is skipped "
                              "and add them to the next batch")
        if cfg.batch_size is not None and cfg.batch_size < self.world_size:
            raise ConfigError(f"--batch-size {cfg.batch_size} (the global batch) is smaller than the "
                              f"{self.world_size} processes; each needs at least one image per step")
        if streaming and cfg.batch_size is not None and cfg.batch_size % self.world_size:
            raise ConfigError(f"streamed from shards, --batch-size {cfg.batch_size} (the global batch) must "
                              f"divide by the {self.world_size} processes, which each stream batches of "
                              "the same size")

    def device(self, name: str) -> torch.device:
        """Each process of a node uses its own GPU, cuda:LOCAL_RANK; cpu stays cpu."""
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cpu":
            return torch.device("cpu")
        if name != "cuda":
            raise ConfigError(f"--device {name}: under torchrun each process takes cuda:LOCAL_RANK; "
                              "use --device cuda, cpu or auto")
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        self.tensor_device = torch.device("cuda", self.local_rank)
        return self.tensor_device

    # ------------------------------------------------------------------ the model
    def wrap(self, step: torch.nn.Module, fsdp: bool) -> torch.nn.Module:
        """What the training step calls: the model and its objective as one module
        (`train.step.TrainingStep`), itself in one process, DDP around it, or sharded in place by
        FSDP2 (each transformer block, then the root, which holds the stem, embeddings, final
        norm, head and the objective's own parameters). Build the optimiser after this."""
        if not self.active:
            return step
        device = next(step.parameters()).device
        if fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(device.type, (self.world_size,))
            for block in step.model.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(step, mesh=mesh)
            self.fsdp, self.sharded = True, step
            return step
        self.ddp = torch.nn.parallel.DistributedDataParallel(
            step, device_ids=[device.index] if device.type == "cuda" else None)
        return self.ddp

    def gradient_sync(self, final: bool):
        """Context for one micro-step's forward and backward: gradients are reduced across
        ranks only on the final micro-step of an accumulated batch."""
        if self.ddp is not None and not final:
            return self.ddp.no_sync()
        if self.sharded is not None:
            self.sharded.set_requires_gradient_sync(final)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ data and metrics
    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch: contiguous, sizes differing by at most one (a
        short last batch can leave a rank with none)."""
        if not self.active:
            return index
        return index.tensor_split(self.world_size)[self.rank]

    def rows(self, total: int) -> range:
        """The positions in a global batch of `total` images that `shard` gives this rank."""
        if not self.active:
            return range(total)
        size, extra = divmod(total, self.world_size)
        start = self.rank * size + min(self.rank, extra)
        return range(start, start + size + (self.rank < extra))

    def sum_(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over the ranks, in place."""
        if self.active:
            for tensor in tensors:
                dist.all_reduce(tensor)

    def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """A copy of `value` summed over the ranks (`value` itself in one process). A sum of
        losses is finite only if every rank's is."""
        if not self.active:
            return value
        total = value.clone()
        dist.all_reduce(total)
        return total

    def max_over_ranks(self, value: int) -> int:
        if not self.active:
            return value
        tensor = torch.tensor(value, device=self.tensor_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor)

    def all_finite(self, tensors: list[torch.Tensor]) -> bool:
        """Whether every value of `tensors` is finite, on every rank (each checks its shards)."""
        from torch.distributed.tensor import DTensor

        local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
        finite = torch.stack([torch.isfinite(t).all() for t in local]).all()
        if not self.active:
            return bool(finite)
        return self.max_over_ranks(int(not finite)) == 0

    # ------------------------------------------------------------------ rank 0 and the others
    def on_rank0(self, fn):
        """fn() run on rank 0 only, its result (or its VitkitError) handed to every rank."""
        if not self.active:
            return fn()
        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("value", fn())
            except VitkitError as e:
                box[0] = ("error", type(e), str(e))
                dist.broadcast_object_list(box, src=0)
                raise
            except BaseException:
                box[0] = ("failed", None, None)
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        kind, *rest = box[0]
        if kind == "error":
            raise rest[0](rest[1])
        if kind == "failed":
            raise RuntimeError("rank 0 failed; its error message says why")
        return rest[0]

    def seed_rank(self, seed: int, update: int) -> None:
        """Give a non-zero rank its own random stream (rank 0 keeps the single-process one)."""
        if self.active and not self.is_main:
            stream = rank_seed(seed, self.rank, update)
            random.seed(stream)
            np.random.seed(stream)
            torch.manual_seed(stream)

    def broadcast_(self, tensors) -> None:
        """Rank 0's values into every rank's tensors, in place."""
        if self.active:
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    # ------------------------------------------------------------------ checkpoints
    # The full states are gathered to rank 0's CPU under FSDP, a collective every rank must
    # join; with DDP (and in one process) rank 0 holds them already. Other ranks get None.
    # States are those of the TrainingStep: "model." and "objective." names.
    def full_state(self, step: torch.nn.Module) -> dict | None:
        if not self.fsdp:
            return step.state_dict() if self.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(step, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.is_main else None

    def full_optimizer_state(self, step: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
        """In the single-process layout: `Optimizer.state_dict()`'s, keyed by parameter index."""
        if not self.fsdp:
            return optimizer.state_dict() if self.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(step, optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return None
        index = {name: i for i, name in enumerate(parameter_names(step, optimizer))}
        return {"state": {index[name]: slots for name, slots in state["state"].items()},
                "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                                 for group in state["param_groups"]]}

    def unsharded(self, step: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module | None:
        """`model` itself, or under FSDP (where `model` is `step.model`, sharded) a full copy on
        rank 0's CPU (None elsewhere)."""
        if not self.fsdp or model is not step.model:
            return model
        state = self.full_state(step)
        if state is None:
            return None
        full = VisionTransformer(model.config)
        full.load_state_dict(split_state(state, "model."))
        return full

    def load_state(self, step: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict | None,
                   optimizer_state: dict | None, source: str) -> None:
        """Load a checkpoint's full states (the TrainingStep's, "model." and "objective." names),
        which only rank 0 has read, into every rank's (replicated or sharded) modules and
        optimiser."""
        if not self.active:
            apply_state(step.model, split_state(state, "model."), source=source)
            check_fits(step.objective, split_state(state, "objective."), source)
            step.objective.load_state_dict(split_state(state, "objective."))
            optimizer.load_state_dict(optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        names = parameter_names(step, optimizer)
        by_name: dict = {}
        if self.is_main:
            check_fits(step, state, source)
            by_name = {
                "state": {names[int(i)]: slots for i, slots in optimizer_state["state"].items()},
                "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                                 for group in optimizer_state["param_groups"]]}
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(step, dict(state) if self.is_main else {}, options=options)
        set_optimizer_state_dict(step, optimizer, by_name, options=options)


def split_state(state: dict, prefix: str) -> dict:
    """The entries of `state` under `prefix`, without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def parameter_names(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The module's name of each optimiser parameter, in the optimiser's index order."""
    name_of = {id(p): name for name, p in module.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def check_fits(module: torch.nn.Module, state: dict, source: str) -> None:
    """The names and full shapes of `state` against the module's (sharded or not)."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    wrong = sorted(set(own) ^ set(state)) + [k for k in own if k in state and tuple(state[k].shape) != own[k]]
    if wrong:
        raise CheckpointError(f"{source} does not fit the model ({', '.join(wrong[:8])}"
                              f"{' ...' if len(wrong) > 8 else ''}); is it a checkpoint of another run?")
