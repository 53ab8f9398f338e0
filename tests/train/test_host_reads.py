"""How often a training step makes the host wait for the device: counted on the CPU with HostReadCounter
around steps 5-8 of short runs of medmoe-nano and mome-nano, within their first epoch (data loading in a worker
process, as on a GPU; the sampler's permutation, a CPU tensor read once per epoch, is not a step's cost)."""

from __future__ import annotations

import pytest
from testkit.align import TINY, args_for, write_tiny_manifest
from testkit.seg import phantom_datalist

from medmoe.align.task import AlignTask, AlignTaskConfig
from medmoe.seg.task import SegTask, SegTaskConfig
from medmoe.train import run_training
from medmoe.train.host_reads import HostReadCounter

FIRST, LAST = 4, 8  # count from before the 5th step to before the 9th: steps 5, 6, 7 and 8
READS_PER_STEP = 2


class CountingSteps:
    """Counts the host reads of steps FIRST + 1 .. LAST (mixed into a task)."""

    reads: HostReadCounter

    def before_step(self, model, step):
        own = getattr(super(), "before_step", None)
        if own is not None:
            own(model, step)
        if step == FIRST:
            self.reads = HostReadCounter()
            self.reads.__enter__()
        elif step == LAST:
            self.reads.__exit__(None, None, None)


class CountingAlign(CountingSteps, AlignTask):
    pass


class CountingSeg(CountingSteps, SegTask):
    pass


def _check(task, steps: int) -> None:
    assert task.reads.total <= READS_PER_STEP * steps, "\n".join(task.reads.calls)


@pytest.mark.timeout(300)
def test_an_alignment_step_reads_the_device_at_most_twice(tmp_path):
    manifest = write_tiny_manifest(tmp_path, n_per_modality=16, bad=False)  # 28 training rows: 14 steps an epoch
    overrides = {k: v for k, v in TINY.items() if k != "text"}  # medmoe-nano's frozen text tower and its cache
    task = CountingAlign(AlignTaskConfig(data=str(manifest), model="medmoe-nano", overrides=overrides,
                                         pretrained=False))
    run_training(task, args_for(tmp_path / "run", "--steps", "9", "--workers", "1", "--log-every", "100",
                                "--batch-size", "2"))
    _check(task, LAST - FIRST)


@pytest.mark.timeout(300)
def test_a_segmentation_step_reads_the_device_at_most_twice(tmp_path, tmp_path_factory):
    config = SegTaskConfig(data=str(phantom_datalist(tmp_path_factory)), patch_size=(32, 32, 32),
                           spacing=(8.0, 8.0, 8.0), progress=False, pretrained=False,
                           overrides={"text": {"model": "tiny-bert"}}, cache_dir=str(tmp_path / "cache"))
    task = CountingSeg(config)
    run_training(task, args_for(tmp_path / "run", "--steps", "9", "--workers", "1", "--log-every", "100",
                                "--batch-size", "2"))
    _check(task, LAST - FIRST)
