"""Training on several processes (Hugging Face Accelerate): what the loops share.

A training loop takes ``accelerator=None`` for one process -- the default: nothing is wrapped,
no collective runs, and the loop is the plain one -- or the ``accelerate.Accelerator`` of a process
started by ``accelerate launch`` (rl/launch.py).

With N processes every process draws the same global batch order from the same seed and takes its
contiguous share of each step's global batch (``share``); the loops index their rows themselves,
so there is no DataLoader to prepare. Each trainable model goes through ``accelerator.prepare``
with its optimizer (``Trainable``), so the engine named by the Accelerate config holds it: DDP
(every process holds the whole model), FSDP 2 or DeepSpeed ZeRO (parameters, gradients and
optimizer states sharded over the processes). The engine averages the gradients over the
processes. Each process backpropagates its rows' part of the *global* loss (losses are divided by
the global count, never by the share's), times N, so that average is the gradient one process
computes over the whole batch, up to float rounding. Engines run collectives inside forward and
backward, so every process runs the same number of micro-batches (``micro_batches``).

Models that only infer -- RL's frozen reference and reward model -- are not prepared: each process
holds them whole on its device. Sampling, token by token with rows that stop early, cannot run
through a sharded model (every forward would gather weights with the other processes, which stop
after other numbers of tokens), so under FSDP the policy samples from a whole copy refreshed after
each update (``refresh_copy``). Only the main process writes checkpoints and weights; a sharded
model's weights are gathered whole first (``full_state_dict``, which every process calls).

What a sharded engine cannot do is refused at submit (rl/params.py ``engine_errors``): Adafactor
(its factored statistics need whole weight matrices) and RL under DeepSpeed (its checkpoints keep
optimizer states in PyTorch's format). tests/test_distributed.py runs DDP and FSDP 2 on CPU
processes; the DeepSpeed path needs CUDA and the deepspeed package, which the test machines lack.
"""
import contextlib
import math

import torch


def world(accelerator):
    """(this process's index, number of processes)."""
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


def is_main(accelerator):
    return accelerator is None or accelerator.is_main_process


def engine(accelerator):
    """What holds the trainable models: NO (one process), MULTI_CPU / MULTI_GPU (DDP), FSDP, DEEPSPEED,
    ... -- of an Accelerator, or of an Accelerate config file's settings (its ``distributed_type``)."""
    if accelerator is None:
        return "NO"
    return str(getattr(accelerator, "distributed_type", "")).split(".")[-1].upper()


def is_sharded(accelerator):
    return engine(accelerator) in ("FSDP", "DEEPSPEED")


def share_bounds(n, accelerator):
    """[lo, hi) of this process's contiguous share of n global rows (the first n % N get one more)."""
    rank, size = world(accelerator)
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def share(rows, accelerator):
    lo, hi = share_bounds(len(rows), accelerator)
    return rows[lo:hi]


def micro_batches(rows, n_global, steps, accelerator):
    """This process's ``rows`` cut into consecutive micro-batches of nearly equal size.

    Their number is the same on every process -- ``steps`` (gradient_accumulation_steps), or fewer
    when the smallest share of the ``n_global`` rows has fewer rows -- because an engine's forward
    and backward are collectives. With one process: ``steps`` micro-batches of the whole batch.
    """
    count = max(1, min(steps, n_global // world(accelerator)[1]))
    base, extra = divmod(len(rows), count)
    parts, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        parts.append(rows[start:end])
        start = end
    return parts


def broadcast_parameters(model, accelerator):
    """Every process takes the main process's weights, as DDP does when it wraps a model; FSDP and
    DeepSpeed shard each process's own copy, so a freshly drawn head must not differ. The model may
    still be on the CPU (a sharded engine moves it): each tensor travels through the device."""
    if world(accelerator)[1] == 1:
        return
    with torch.no_grad():
        for p in model.parameters():
            there = p.data.to(accelerator.device)
            torch.distributed.broadcast(there, src=0)
            if there is not p.data:
                p.data.copy_(there)


ADAFACTOR_SHARDED = ("Adafactor cannot train sharded models: its factored second moments need whole weight "
                     "matrices, which FSDP and DeepSpeed split over the processes. Set optimizer to adamw (its "
                     "states are sharded with the weights).")


class Trainable:
    """A model being trained and its optimizer, as the run's engine holds them.

    ``module`` is what the loop calls for forward passes (the model itself with one process; the
    engine's wrapper otherwise); ``model`` stays the Hugging Face model (saving, attributes).
    Per step: ``zero_grad``; for each micro-batch, inside ``micro_batch(last)``, a forward of
    ``module`` and ``backward(loss)``; then ``step()``, which clips to ``config.max_grad_norm``,
    steps and returns the gradient norm before clipping. ``config``: the loop's (its batch_size and
    gradient_accumulation_steps size DeepSpeed's micro-batches).
    """

    def __init__(self, model, optimizer, accelerator, config):
        self.model, self.accelerator, self.max_grad_norm = model, accelerator, config.max_grad_norm
        self.engine = engine(accelerator)
        self.processes = world(accelerator)[1]
        if self.processes == 1:
            self.module, self.optimizer = model, optimizer
            return
        if is_sharded(accelerator) and _is_adafactor(optimizer):
            raise RuntimeError(ADAFACTOR_SHARDED)
        if self.engine == "FSDP" and accelerator.state.fsdp_plugin.fsdp_version != 2:
            raise RuntimeError("the training loops run FSDP 2 only: set fsdp_version: 2 in the Accelerate config")
        if self.engine == "DEEPSPEED":
            # No DataLoader tells DeepSpeed the batch: the loop cuts its own micro-batches and marks the
            # step's last (micro_batch); the engine clips, as its config says, at step().
            share_rows = math.ceil(config.batch_size / self.processes)
            micro = math.ceil(share_rows / config.gradient_accumulation_steps)
            accelerator.state.deepspeed_plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=1,
                train_batch_size=micro * self.processes, gradient_clipping=float(config.max_grad_norm))
        if is_sharded(accelerator):
            broadcast_parameters(model, accelerator)
        # FSDP 2 needs the model and its optimizer in one call (it swaps the optimizer's parameters)
        self.module, self.optimizer = accelerator.prepare(model, optimizer)

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def micro_batch(self, last):
        """Around one micro-batch's forward and backward. DDP reduces gradients only after the
        step's last one; FSDP reduce-scatters after each (whole gradients would not fit);
        DeepSpeed is told whether this is the step's last."""
        if self.engine.startswith("MULTI_") and self.processes > 1 and not last:
            return self.module.no_sync()
        if self.engine == "DEEPSPEED":
            self.module.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def backward(self, loss):
        """``loss``: this process's part of the global batch's loss (module docstring)."""
        if self.engine == "DEEPSPEED":
            self.module.backward(loss * self.processes)
        elif self.processes > 1:
            (loss * self.processes).backward()  # the engine averages over the processes
        else:
            loss.backward()

    def step(self, read=True):
        """Clip, take the optimizer step; the gradient norm before clipping (a float). ``read=False``
        returns it unread (a tensor where it is one: ``as_number`` reads it), so that the host does
        not wait here for the device to finish the step."""
        if self.engine == "DEEPSPEED":
            self.module.step()  # clips (gradient_clipping), steps and zeroes the gradients
            return as_number(self.module.get_global_grad_norm())
        # torch's clipping takes DDP's averaged and FSDP's sharded (DTensor) gradients alike; Accelerate's
        # looks the model up by comparing parameter lists, which fails once two FSDP models are prepared
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return as_number(norm) if read else norm

    def optimizer_state(self):
        """The optimizer's state in PyTorch's format (keyed by parameter index, whole tensors), so a
        checkpoint resumes with any engine and number of processes. Every process calls it."""
        if self.engine != "FSDP":
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(self.module, self.optimizer.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        index = {name: i for i, name in enumerate(self._trained_names())}
        return {"state": {index[name]: value for name, value in full.get("state", {}).items()},
                "param_groups": [{**g, "params": [index[name] for name in g["params"]]}
                                 for g in full.get("param_groups", [])]}

    def load_optimizer_state(self, state):
        """Load what ``optimizer_state`` wrote (every process reads the same checkpoint)."""
        if self.engine != "FSDP":
            self.optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = self._trained_names()
        full = {"state": {names[i]: value for i, value in state["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(self.module, self.optimizer.optimizer, full,
                                 options=StateDictOptions(full_state_dict=True))

    def _trained_names(self):
        # the optimizer's parameters, in order: make_optimizer took the trainable ones of the model
        return [name for name, p in self.model.named_parameters() if p.requires_grad]


def _is_adafactor(optimizer):
    from transformers.optimization import Adafactor

    return isinstance(optimizer, Adafactor)


def as_number(value):
    """A gradient norm as a float, whether a tensor, a sharded DTensor or already a number. (A
    DTensor's is a collective: every process reads it at the same point.)"""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)


def full_state_dict(model, accelerator):
    """The whole weights of a trained ``model`` (the Hugging Face model of a ``Trainable``), on the
    main process; None on the others. Every process calls it: a sharded model is gathered."""
    if not is_sharded(accelerator):
        return model.state_dict() if is_main(accelerator) else None
    if engine(accelerator) == "DEEPSPEED":
        import deepspeed

        # ZeRO-3 leaves each parameter's shard in place of its data; gather them all for the copy
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if is_main(accelerator) else None
        return state
    state = accelerator.get_state_dict(model)  # FSDP 2: whole tensors on the CPU of the main process
    return state if is_main(accelerator) else None


def save_trained(model, tokenizer, dest, accelerator, *, extra_files=None):
    """``save_hf_folder`` of a trained model, written by the main process with its whole weights
    (a plain Hugging Face folder whatever the engine). Every process calls it."""
    from rl.modeling import save_hf_folder

    state = full_state_dict(model, accelerator) if is_sharded(accelerator) else None
    if is_main(accelerator):
        save_hf_folder(model, tokenizer, dest, extra_files=extra_files, state_dict=state)
    wait_for_everyone(accelerator)
    return dest


@torch.no_grad()
def refresh_copy(copy, model):
    """Copy ``model``'s weights (FSDP: its shards gathered whole, one collective per tensor, in the
    same order on every process) into ``copy``, a plain model of the same architecture."""
    targets = dict(copy.named_parameters())
    for name, p in model.named_parameters():
        whole = p.full_tensor() if hasattr(p, "full_tensor") else p
        targets[name].copy_(whole)


def sum_numbers(values, accelerator):
    """A list of Python floats summed over the processes (returned as floats)."""
    if world(accelerator)[1] == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()


def gather_lists(values, accelerator):
    """Every process's list, concatenated in process order (each share's rows in global order)."""
    if world(accelerator)[1] == 1:
        return list(values)
    parts = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(parts, list(values))
    return [v for part in parts for v in part]


def any_process(flag, accelerator):
    """True on every process when ``flag`` is true on any (so all stop at the same step)."""
    return sum_numbers([1.0 if flag else 0.0], accelerator)[0] > 0


def wait_for_everyone(accelerator):
    if world(accelerator)[1] > 1:
        accelerator.wait_for_everyone()
