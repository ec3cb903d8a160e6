"""Run by test_train_accumulation under torchrun (2 gloo processes): each rank accumulates 4
micro-batches of 4 through DDP and compares its gradients with one process's batch of 32."""
from __future__ import annotations

import contextlib
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cn_clip_ext.model.factory import add_model_config, create_model
from cn_clip_ext.synth.toys import make_toy_pairs
from cn_clip_ext.training.accumulation import cached_step
from cn_clip_ext.training.loss import clip_loss
from cn_clip_ext.training.objectives import ClipObjective


class NoScaling:
    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss


def main(config_dir: str, model_name: str) -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    add_model_config(config_dir)
    model = create_model(model_name, seed=0).eval()
    reference = create_model(model_name, seed=0).eval()  # the same weights (same seed)
    data = make_toy_pairs(32, 64, seed=1)
    images, tokens = data.images, data.tokens
    objective = ClipObjective()

    # the reference: the whole batch of 32 in one forward, no process group involved
    img, txt, scale = reference(images, tokens)
    ref = clip_loss(img, txt, scale)
    ref.backward()
    ref_loss = float(ref.detach())
    want = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}

    ddp = DistributedDataParallel(model)
    share = images.shape[0] // world
    mine = slice(rank * share, (rank + 1) * share)
    micro = [[images[mine][i:i + 4], tokens[mine][i:i + 4]] for i in range(0, share, 4)]
    result = cached_step(ddp, objective, micro, contextlib.nullcontext, NoScaling(), lambda _: None)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    worst = max(float((got[n] - want[n]).abs().max()) for n in want)
    dist.destroy_process_group()
    if set(got) != set(want) or worst > 1e-5 or abs(result.loss - ref_loss) > 1e-5:
        print(f"rank {rank}: gradients differ by {worst}, loss {result.loss} vs {ref_loss}", file=sys.stderr)
        return 1
    print(f"rank {rank}: gradients equal (largest difference {worst:.2e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
