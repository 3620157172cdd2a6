"""The Lightning CheckpointIO plugin with a real Trainer on CPU: checkpoint folders, save_top_k, exact resume."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from convert import load_checkpoint  # noqa: E402
from convert.lightning import SafetensorsCheckpointIO  # noqa: E402
from tests.helpers import bits  # noqa: E402


class TinyModule(L.LightningModule):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.01)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)}


def _data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    y = x.sum(dim=1, keepdim=True) ** 2 / 10
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)


def _trainer(epochs: int, callbacks: list, plugins: list) -> L.Trainer:
    # no ModelCheckpoint given: none at all (Lightning's default one would write into the working directory)
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, deterministic=True, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, plugins=plugins,
                     enable_checkpointing=bool(callbacks))


def _fit(epochs: int, ckpt_dir: Path | None = None, ckpt_path: str | None = None, plugin: bool = True,
         top_k: int = -1, save_last: bool = False):
    L.seed_everything(0, verbose=False)
    model = TinyModule()
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, save_top_k=top_k, monitor="train_loss", mode="min",
                                 save_last=save_last)] if ckpt_dir else []
    trainer = _trainer(epochs, callbacks, [SafetensorsCheckpointIO()] if plugin else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, _data(), ckpt_path=ckpt_path)
    return model, trainer


def _assert_no_pickle(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for path in files:
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", f"{path} is a pickle or zip"


def _assert_same_training_state(a: L.Trainer, b: L.Trainer, model_a, model_b) -> None:
    for (name, x), y in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert bits(x) == bits(y), name
    sa, sb = a.optimizers[0].state_dict(), b.optimizers[0].state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for key in sa["state"]:
        for name, x in sa["state"][key].items():
            assert bits(x) == bits(sb["state"][key][name]), (key, name)
    assert a.lr_scheduler_configs[0].scheduler.state_dict() == b.lr_scheduler_configs[0].scheduler.state_dict()
    assert a.global_step == b.global_step


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """4 epochs in one go, checkpointing every epoch with save_top_k=2."""
    ckpt_dir = tmp_path_factory.mktemp("full")
    model, trainer = _fit(4, ckpt_dir, top_k=2, save_last=True)
    return model, trainer, ckpt_dir


def test_checkpoints_are_folders_without_pickles_and_top_k_removes_old_ones(uninterrupted):
    _, trainer, ckpt_dir = uninterrupted
    kept = sorted(p.name for p in ckpt_dir.iterdir())
    assert kept == ["epoch=2-step=15.ckpt", "epoch=3-step=20.ckpt", "last.ckpt"], kept  # epochs 0, 1 removed
    assert load_checkpoint(ckpt_dir / "last.ckpt")["global_step"] == 20  # replaced in place every epoch
    assert all((ckpt_dir / n).is_dir() and (ckpt_dir / n / "checkpoint.json").is_file() for n in kept)
    _assert_no_pickle(ckpt_dir)
    best = trainer.checkpoint_callback.best_model_path
    ck = load_checkpoint(best)
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "epoch", "global_step"} <= set(ck)
    assert ck["hyper_parameters"] == {"hidden": 8}
    fresh = TinyModule()  # instead of load_from_checkpoint (which calls torch.load): load the state dict
    fresh.load_state_dict(ck["state_dict"])


def test_resume_from_a_folder_is_bitwise_an_uninterrupted_run(uninterrupted, tmp_path):
    model_full, trainer_full, _ = uninterrupted
    first_dir = tmp_path / "first"
    _fit(2, first_dir, top_k=-1)
    resume_from = first_dir / "epoch=1-step=10.ckpt"
    assert resume_from.is_dir()
    model, trainer = _fit(4, tmp_path / "second", ckpt_path=str(resume_from))
    _assert_same_training_state(trainer_full, trainer, model_full, model)
    trainer.save_checkpoint(tmp_path / "final.ckpt")  # trainer.save_checkpoint goes through the plugin too
    _assert_no_pickle(tmp_path / "final.ckpt")
    assert bits(load_checkpoint(tmp_path / "final.ckpt")["state_dict"]["net.0.weight"]) == bits(model.net[0].weight)


def test_resume_from_an_old_pickled_ckpt_file_reads_it_safely(uninterrupted, tmp_path, monkeypatch):
    model_full, trainer_full, _ = uninterrupted
    _fit(2, tmp_path / "old", top_k=-1, plugin=False)  # Lightning's default: torch.save'd .ckpt files
    old = tmp_path / "old" / "epoch=1-step=10.ckpt"
    assert old.is_file() and old.read_bytes()[:2] == b"PK"

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", no_torch_load)
    model, trainer = _fit(4, ckpt_path=str(old))
    _assert_same_training_state(trainer_full, trainer, model_full, model)


def test_remove_leaves_foreign_folders_alone(tmp_path):
    from convert import ConvertError

    foreign = tmp_path / "data.ckpt"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(ConvertError):
        SafetensorsCheckpointIO().remove_checkpoint(foreign)
    with pytest.raises(ConvertError):
        SafetensorsCheckpointIO().save_checkpoint({"a": 1}, foreign)
    assert (foreign / "keep.txt").read_text() == "x"


def test_ckpt_path_last_finds_the_last_folder(uninterrupted, tmp_path):
    model_full, trainer_full, _ = uninterrupted
    _fit(2, tmp_path / "ck", top_k=1, save_last=True)
    assert (tmp_path / "ck" / "last.ckpt" / "checkpoint.json").is_file()
    model, trainer = _fit(4, tmp_path / "ck", ckpt_path="last", top_k=1, save_last=True)
    _assert_same_training_state(trainer_full, trainer, model_full, model)
