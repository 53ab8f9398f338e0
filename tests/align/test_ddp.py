from pathlib import Path

import pytest
import torch
from testkit.align import ddp_batch, ddp_model


@pytest.mark.ddp
@pytest.mark.timeout(240)
def test_two_process_gathered_loss_and_gradients_equal_one_process(tmp_path, torchrun):
    worker = Path(__file__).with_name("ddp_align_worker.py")
    torchrun(str(worker), str(tmp_path), timeout=230)

    model = ddp_model()
    images, reports = ddp_batch()
    out = model(images, reports, return_loss=True)
    out["global_loss"].backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for state in ranks:
        assert state["loss"].item() == pytest.approx(out["global_loss"].item(), rel=1e-5)
    checked = 0
    for name, p in model.named_parameters():
        if p.grad is None or not p.grad.abs().sum():
            continue
        for state in ranks:
            assert torch.allclose(state["grads"][name], p.grad, rtol=1e-4, atol=1e-6), name
        checked += 1
    assert checked > 10  # backbone, the experts used, projections, temperature
    assert "log_logit_scale" in ranks[0]["grads"]
