"""The frozen-text cache at corpus scale: float16 on the CPU, built once across ranks, off over budget."""

from pathlib import Path

import pytest
import torch
from testkit.align import TINY, tiny_model, write_tiny_manifest

from medmoe.align.task import AlignTask, AlignTaskConfig

FROZEN = {**TINY, "text": {"model": "tiny-bert", "max_length": 24, "freeze": "all"}}
REPORTS = [f"Finding number {i}: small opacity in segment {i % 7}." for i in range(11)]

WORKER = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[2])
from testkit.align import tiny_model
from test_text_cache import FROZEN, REPORTS
dist.init_process_group("gloo")
model = tiny_model(text=FROZEN["text"]).eval()
model.enable_text_cache()
added = model.warm_text_cache(REPORTS, batch_size=2)
torch.save({k: (v[0], v[1]) for k, v in model._text_cache.items()}, f"{sys.argv[1]}/cache{dist.get_rank()}.pt")
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.ddp
@pytest.mark.timeout(180)
def test_two_ranks_encode_half_each_and_end_with_the_single_process_cache(tmp_path, torchrun):
    script = tmp_path / "warm.py"
    script.write_text(WORKER)
    here = str(Path(__file__).parent)
    torchrun(str(script), str(tmp_path), here, cwd=here, timeout=170)
    single = tiny_model(text=FROZEN["text"]).eval()
    single.enable_text_cache()
    single.warm_text_cache(REPORTS, batch_size=2)
    for rank in (0, 1):
        cache = torch.load(tmp_path / f"cache{rank}.pt", weights_only=True)
        assert sorted(cache) == sorted(REPORTS)
        for report, (sentence, words) in cache.items():
            assert torch.equal(sentence, single._text_cache[report][0])
            assert torch.equal(words, single._text_cache[report][1])


def test_cache_turns_off_over_its_budget_and_when_the_text_tower_trains(tmp_path):
    manifest = write_tiny_manifest(tmp_path)
    over = AlignTask(AlignTaskConfig(data=str(manifest), overrides=FROZEN, text_cache_gb=1e-9))
    over.build_model()
    assert over._model._text_cache is not None
    over.train_dataset()
    assert over._model._text_cache is None
    within = AlignTask(AlignTaskConfig(data=str(manifest), overrides=FROZEN))
    within.build_model()
    within.train_dataset()
    assert len(within._model._text_cache) == 5  # the distinct training reports (the broken row's too)
    assert within._model.text_cache_bytes(10) == 10 * (1 + 24) * within._model.text.width * 2
    trained = AlignTask(AlignTaskConfig(data=str(manifest), overrides=dict(TINY)))  # freeze none
    trained.build_model()
    trained.train_dataset()
    assert trained._model._text_cache is None


def test_cached_text_under_bf16_autocast():
    model = tiny_model(text=FROZEN["text"]).eval()
    model.enable_text_cache()
    model.warm_text_cache(REPORTS[:3])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(3, 3, 64, 64), REPORTS[:3])
    assert out["text_embeds"].shape[0] == 3 and torch.isfinite(out["text_embeds"].float()).all()


def test_new_reports_of_a_batch_are_encoded_together_and_cached_independently_of_the_batch():
    """A report's cached output is what it gets encoded alone (a resumed run meets its reports in other
    batches), while the batch's new reports share the text tower's calls."""
    from testkit.align import REPORTS as OTHERS

    reports = list(dict.fromkeys([*REPORTS[:9], "MRI brain: no acute lesion.", "Knee MRI: torn meniscus.", *OTHERS]))
    model = tiny_model(text=FROZEN["text"]).eval()
    model.enable_text_cache()
    calls = []
    hook = model.text.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    with torch.no_grad():
        model.encode_text(reports)
    hook.remove()
    assert sorted(model._text_cache) == sorted(reports)
    assert 0 < len(calls) < len(reports)
    alone = tiny_model(text=FROZEN["text"]).eval()
    alone.enable_text_cache()
    for report in reports:
        with torch.no_grad():
            alone.encode_text([report])
        sentence, words, word_text = model._text_cache[report]
        assert word_text == alone._text_cache[report][2]
        assert torch.equal(sentence, alone._text_cache[report][0]) and torch.equal(words, alone._text_cache[report][1])
