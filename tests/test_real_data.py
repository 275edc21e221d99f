"""Real transfer learning on real photos with real ImageNet weights (slow)."""

import pytest
import torch

from snugfit import ImageDataLoaders, load_learner, vision_learner
from snugfit.models import packaged_lite0_weights

pytestmark = pytest.mark.slow


def test_fine_tune_hymenoptera_reaches_95_percent(hymenoptera, tmp_path):
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(hymenoptera, bs=32, size=224, num_workers=2, seed=0)
    assert dls.vocab == ["ants", "bees"]
    assert len(dls.valid_items) == 153
    learn = vision_learner(
        dls, "tf_efficientnet_lite0", weights=packaged_lite0_weights(), metrics=["accuracy"]
    )
    learn.fine_tune(2, freeze_epochs=1)
    acc = learn.recorder.rows[-1]["accuracy"]
    assert acc >= 0.95, learn.recorder.rows
    learn.save(tmp_path / "model")
    loaded = load_learner(tmp_path / "model")
    bee = hymenoptera / "val" / "bees"
    labels, _ = loaded.predict_many(sorted(bee.glob("*.jpg"))[:10])
    assert labels.count("bees") >= 9


def test_demo_runs_offline_and_learns(tmp_path, monkeypatch):
    from snugfit.app.demo import run_demo

    monkeypatch.setenv("SNUGFIT_CACHE", str(tmp_path / "cache"))
    learn = run_demo(tmp_path / "demo")
    assert learn.validate()["accuracy"] >= 0.95
    assert (tmp_path / "demo" / "model" / "model.safetensors").is_file()
    assert len(list((tmp_path / "cache" / "digits").glob("*/*.png"))) == 1797


def test_auto_fit_hymenoptera_reaches_97_percent(hymenoptera):
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(hymenoptera, bs=32, size=224, num_workers=2, seed=0)
    learn = vision_learner(
        dls, "tf_efficientnet_lite0", weights=packaged_lite0_weights(), metrics=["accuracy"]
    )
    learn.auto_fit(2)
    assert learn.validate()["accuracy"] >= 0.97  # error <= 3%


@pytest.mark.slow
def test_segmentation_of_generated_scenes_reaches_dice_0_9(tmp_path):
    """Textured shapes pasted on the real photos: the default recipe on the packaged
    Lite0 encoder reaches a mean Dice (shapes, background left out) of 0.9."""
    from scenes import write_scenes
    from snugfit import SegmentationDataLoaders, unet_learner

    data = write_scenes(tmp_path / "scenes", n_train=120, n_valid=32, size=(96, 144))
    torch.manual_seed(0)
    dls = SegmentationDataLoaders.from_folder(data, bs=8, size=(96, 144), seed=0)
    learn = unet_learner(dls, "tf_efficientnet_lite0", weights=packaged_lite0_weights())
    learn.auto_fit()
    assert learn.validate()["dice"] >= 0.9
