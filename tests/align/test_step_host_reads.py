"""An alignment training step reads the device back once: the sparse dispatch's per-expert counts, which
decide on the host which experts run. Every other read would stall a CUDA stream mid-step."""

from testkit.align import TINY, write_tiny_manifest

from medmoe.align.task import AlignTask, AlignTaskConfig
from medmoe.train.host_reads import HostReadCounter

FROZEN_TEXT = {**TINY, "text": {"model": "tiny-bert", "max_length": 24, "freeze": "all"}}


def _task_model_batch(tmp_path, overrides):
    manifest = write_tiny_manifest(tmp_path)
    task = AlignTask(AlignTaskConfig(data=str(manifest), model="medmoe-nano", pretrained=False, image_size=64,
                                     overrides=overrides))
    model = task.build_model()
    dataset = task.train_dataset()
    batch = task.collate([dataset[i] for i in range(4)])
    batch.pop("bad")
    return task, model, batch


def _step_reads(task, model, batch) -> HostReadCounter:
    with HostReadCounter() as reads:
        values = task.training_step(model, batch)
        values["loss"].backward()
    return reads


def test_step_with_the_cached_frozen_text_tower_reads_only_the_dispatch_counts(tmp_path):
    task, model, batch = _task_model_batch(tmp_path, FROZEN_TEXT)
    assert model._text_cache is not None
    reads = _step_reads(task, model, batch)
    assert reads.total == 1 and reads.calls[0].startswith("tolist at medmoe/moe/dispatch.py"), reads.calls


def test_step_with_a_trained_text_tower_reads_nothing_else_of_medmoe(tmp_path):
    """The tower's encoder is Hugging Face's, whose attention mask check reads the mask; medmoe adds nothing."""
    task, model, batch = _task_model_batch(tmp_path, dict(TINY))
    assert model._text_cache is None
    reads = _step_reads(task, model, batch)
    ours = [call for call in reads.calls if "site-packages" not in call]
    assert len(ours) == 1 and ours[0].startswith("tolist at medmoe/moe/dispatch.py"), reads.calls
