"""Trains the same small 3D CNN twice under DistributedDataParallel (gloo, 2 processes):
once with nn.Conv3d, once converted to torchconv3d, and prints the largest parameter
difference after the steps. Run by tests/test_stress.py:

    python tests/ddp_worker.py STEPS [ddp|fsdp|ddp_cuda] [OUT]

ddp_cuda keeps model and data on the GPU, both ranks on one device: NCCL refuses two ranks
on one GPU, gloo reduces CUDA tensors.
"""
import copy
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torchconv3d  # noqa: E402


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(2, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Conv3d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),
        nn.Conv3d(8, 4, (3, 1, 1), padding=(1, 0, 0)), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).double()


def train(model, wrap, rank, steps, device):
    model = wrap(model.to(device))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    for _ in range(steps):
        x = torch.randn(2, 2, 6, 8, 8, dtype=torch.float64, generator=g).to(device)
        target = torch.randint(0, 3, (2,), generator=g).to(device)
        loss = nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k.removeprefix("module."): v.detach().clone() for k, v in model.state_dict().items()}


def worker(rank, world, steps, mode, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        def wrap(m):  # on the CPU even where a GPU is present (its default mesh)
            from torch.distributed.device_mesh import init_device_mesh

            fully_shard(m, mesh=init_device_mesh("cpu", (world,)))
            return m

        def gather(state):
            return {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                    for k, v in state.items()}
    else:
        def wrap(m):
            return nn.parallel.DistributedDataParallel(m)

        def gather(state):
            return state

    device = "cuda" if mode.endswith("cuda") else "cpu"
    ref = {k: v.cpu() for k, v in gather(train(make_model(), wrap, rank, steps, device)).items()}
    ours_model = torchconv3d.convert(copy.deepcopy(make_model()))
    assert sum(isinstance(m, torchconv3d.Conv3d) for m in ours_model.modules()) == 3
    ours = {k: v.cpu() for k, v in gather(train(ours_model, wrap, rank, steps, device)).items()}
    start = make_model().state_dict()
    diff = max((ref[k] - ours[k]).abs().max().item() for k in start)
    moved = max((ref[k] - start[k]).abs().max().item() for k in start)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"max_diff": diff, "max_update": moved, "steps": steps}, f)
    dist.barrier()  # no collective may still be in flight when gloo's threads are torn down
    dist.destroy_process_group()


if __name__ == "__main__":
    steps = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "ddp"
    out = sys.argv[3] if len(sys.argv) > 3 else "ddp_result.json"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, steps, mode, port, out), nprocs=2)
    with open(out) as f:
        print(f.read())
