"""The CUDA paths: the same numbers as on the CPU in fp32, a sane bf16 step, the engine, OT, the samplers and
``torchrun`` on NCCL.  Skipped where no GPU is present (CI has none); run them on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sbt_lib.checkpoint import load_checkpoint, unprefixed
from sbt_lib.data.datasets import load_dataset
from sbt_lib.generation.samplers import sample
from sbt_lib.models.sit import SiT
from sbt_lib.models.tokenizer import SelfBootTok
from sbt_lib.objective.objective import Objective
from sbt_lib.objective.ot import sinkhorn, squared_euclidean
from sbt_lib.train import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 off, so that fp32 on the GPU is comparable with fp32 on the CPU."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _pair(tiny_config):
    torch.manual_seed(0)
    cpu = SelfBootTok(tiny_config).eval()
    torch.manual_seed(0)
    return cpu, SelfBootTok(tiny_config).eval().cuda()


def test_the_tokenizer_computes_the_same_on_cuda_as_on_cpu(tiny_config, tiny_shapes):
    cpu, gpu = _pair(tiny_config)
    images = tiny_shapes.get_batch(torch.arange(8)).images
    with torch.no_grad():
        recon_c, enc_c = cpu(images)
        recon_g, enc_g = gpu(images.cuda())
    for group, tokens in enc_c.tokens.items():
        torch.testing.assert_close(enc_g.tokens[group].cpu(), tokens, atol=1e-4, rtol=1e-4, msg=group)
    torch.testing.assert_close(recon_g.cpu(), recon_c, atol=1e-4, rtol=1e-4)


def test_a_bf16_step_is_close_to_fp32_and_softvq_stays_fp32(tiny_config, tiny_shapes):
    _, gpu = _pair(tiny_config)
    batch = tiny_shapes.get_batch(torch.arange(16)).to("cuda")
    objective = Objective(entropy_weight=0.01).cuda()
    fp32 = objective(gpu, batch)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = objective(gpu, batch)
        _, enc = gpu(batch.images)
    assert all(t.dtype == torch.float32 for t in enc.tokens.values())  # SoftVQ computes in fp32 under autocast
    total = sum(bf16.values())
    assert torch.isfinite(total) and total.item() == pytest.approx(sum(fp32.values()).item(), rel=0.03)
    total.backward()
    grads = [p.grad for p in gpu.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_the_engine_trains_on_cuda_in_bf16_and_its_checkpoint_loads_on_cpu(tiny_config, tmp_path):
    """tests/test_train.py's small-set fit, on the GPU in bf16 with EMA and checkpoints."""
    data = load_dataset("shapes", "train", image_size=16, size=16, seed=1)
    cfg = TrainConfig(steps=100, batch_size=16, lr=5e-3, warmup=2, log_every=1, progress=False, device="cuda",
                      bf16=True, ema=0.9, ckpt_every=50)
    torch.manual_seed(0)
    result = Trainer(SelfBootTok(tiny_config), Objective(), data, cfg, out_dir=tmp_path).run()
    assert next(result.model.parameters()).is_cuda
    losses = torch.tensor([r["loss"] for r in result.history if "loss" in r])
    assert torch.isfinite(losses).all() and losses[-5:].mean() < 0.7 * losses[:5].mean()
    tensors, meta = load_checkpoint(tmp_path / "checkpoint")
    assert meta["step"] == 100 and any(k.startswith("rng.cuda") for k in tensors)
    cpu = SelfBootTok(tiny_config)
    cpu.load_state_dict(unprefixed("model", tensors))  # a GPU run's checkpoint serves a CPU machine
    images = data.get_batch(torch.arange(8)).images
    with torch.no_grad():
        torch.testing.assert_close(cpu.eval()(images)[0], result.model.eval()(images.cuda())[0].cpu(),
                                   atol=1e-4, rtol=1e-4)


def test_sinkhorn_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(4, 16, 8, generator=g), torch.randn(4, 12, 8, generator=g)
    on_cpu = sinkhorn(squared_euclidean(x, z), eps=0.05)
    on_gpu = sinkhorn(squared_euclidean(x.cuda(), z.cuda()), eps=0.05)
    assert on_gpu.plan.is_cuda
    torch.testing.assert_close(on_gpu.plan.cpu(), on_cpu.plan, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dopri5", "sde"])
def test_the_samplers_run_on_cuda_with_guidance_and_a_seed(sampler):
    torch.manual_seed(0)
    model = SiT(num_tokens=6, token_dim=4, num_classes=3, size="tiny")
    with torch.no_grad():  # perturb the zero-initialised gates and output, so the model computes something
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = model.cuda()
    y = torch.tensor([0, 1, 2])
    draws = [sample(model, y, sampler, steps=4, scale=2.0, generator=torch.Generator("cuda").manual_seed(0))
             for _ in range(2)]
    assert draws[0].is_cuda and draws[0].shape == (3, 6, 4) and torch.isfinite(draws[0]).all()
    torch.testing.assert_close(draws[0], draws[1])  # the same seed, the same samples


def test_the_train_command_runs_under_torchrun_on_nccl(tmp_path):
    path = os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                          "-m", "sbt_lib", "train", "base", "--scale", "tiny", "--out", str(tmp_path)],
                         env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "DDP on nccl" in run.stdout, run.stdout[-2000:]
    found = list(tmp_path.rglob("checkpoint.json"))
    assert found, "no checkpoint written"
    _, meta = load_checkpoint(found[0].with_suffix(""))
    assert meta["step"] > 0
