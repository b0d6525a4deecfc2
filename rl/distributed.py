"""Data-parallel training on several processes (Hugging Face Accelerate): what the loops share.

A training loop takes ``accelerator=None`` for one process -- the default: nothing is wrapped,
no collective runs, and the numbers are exactly those of the plain loop -- or the
``accelerate.Accelerator`` of a process started by ``accelerate launch`` (rl/launch.py).

With N processes every process holds the whole model and the same data, and draws the same
global batch order from the same seed. Each takes its contiguous share of the step's global
batch (``share``), backpropagates its rows' part of the *global* mean loss (losses are divided
by the global count, never by the share's), and after the step's last micro-batch the gradients
are summed across processes (``sum_gradients``, one all-reduce per model and step). That is the
gradient DDP computes (DDP averages per-process means, the same number when shares are equal),
so it equals one process's gradient over the whole batch up to float rounding; clipping and the
optimizer step then run identically everywhere and the weights stay equal without broadcasts.
Only the main process writes checkpoints, metrics and logs.

The gradients are summed here rather than by the DDP wrapper because the reward model's
shared-prompt pass calls the trunk and the head directly (DDP only sees its own forward), and
the RL step trains the value model and then the policy over several micro-batches; a flat
all-reduce after backward works for every such path. Sharded engines (FSDP, DeepSpeed ZeRO-3)
need the models wrapped by ``accelerator.prepare``; the loops do not do that yet, so a launch
with such a config stops at once with a message (``check_engine``).
"""
import torch


def world(accelerator):
    """(this process's index, number of processes)."""
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


def is_main(accelerator):
    return accelerator is None or accelerator.is_main_process


def share_bounds(n, accelerator):
    """[lo, hi) of this process's contiguous share of n global rows (the first n % N get one more)."""
    rank, size = world(accelerator)
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def share(rows, accelerator):
    lo, hi = share_bounds(len(rows), accelerator)
    return rows[lo:hi]


def sum_gradients(model, accelerator):
    """Sum every parameter's gradient over the processes (a no-op with one process)."""
    if world(accelerator)[1] == 1:
        return
    missing = [p for p in model.parameters() if p.requires_grad and p.grad is None]
    for p in missing:  # a process whose share touched no row of some weight still joins the sum
        p.grad = torch.zeros_like(p)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective instead of one per tensor
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(model, accelerator):
    """Every process starts from the main process's weights (as DDP does when it wraps a model): a
    freshly initialised head would otherwise differ between processes."""
    if world(accelerator)[1] == 1:
        return
    with torch.no_grad():
        for p in model.parameters():
            torch.distributed.broadcast(p.data, src=0)


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


SHARDED_ENGINES = ("FSDP", "DEEPSPEED", "MEGATRON_LM")


def check_engine(accelerator):
    """Refuse engines that shard the model: the loops sum whole gradients (module docstring)."""
    kind = str(getattr(accelerator, "distributed_type", "")).split(".")[-1].upper()
    if kind in SHARDED_ENGINES:
        raise RuntimeError(f"the training loops run data-parallel (DDP) only; {kind} needs the models wrapped by "
                           f"accelerator.prepare, which they do not do yet. Use configs/accelerate/multi_gpu.yaml.")
