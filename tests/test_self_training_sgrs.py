"""nnUNetTrainerSelfTrainingSGRS: round 0 is SGRS, its EMA teacher pseudo-labels the pool, round 1 is supervised.

conftest's budget (2 epochs x 3 iterations): round 0 is epoch 0, round 1 epoch 1.
"""
import json
import os

import torch

from conftest import run_cli
from test_mean_teacher import make_trainer
from test_self_training import _latest_log, _state

STSGRS = "nnUNetTrainerSelfTrainingSGRS"


def test_teacher_pseudo_labels_then_round_1_trains_the_student_only(dataset_2d, nnunet_env, monkeypatch):
    torch.manual_seed(0)
    trainer = make_trainer(STSGRS, fold=1)
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    out = trainer.train_step(next(trainer.dataloader_train))  # round 0: SGRS's step
    assert {"con_loss", "nr_loss", "omega", "theta"} <= set(out)
    assert trainer.total_iterations == trainer.num_iterations_per_epoch  # SGRS's warm-up spans round 0 only
    with torch.no_grad():  # a student far from its teacher, so the two cannot be mistaken for each other
        for p in trainer.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student, teacher = _state(trainer.network), _state(trainer.teacher)

    labelling_weights = []
    pseudo_segmentation = type(trainer).pseudo_segmentation

    def recording(self, predictor, data):
        labelling_weights.append(_state(predictor.network))
        return pseudo_segmentation(self, predictor, data)

    monkeypatch.setattr(type(trainer), "pseudo_segmentation", recording)
    trainer.current_epoch = 1
    trainer.on_epoch_start()  # round 1: pseudo labels, then a fresh network and a teacher restarted from it
    assert trainer.current_round == 1 and len(labelling_weights) == 6  # the 6 pool cases
    for k in teacher:
        assert torch.equal(labelling_weights[0][k], teacher[k]), k
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)
    fresh = _state(trainer.network)
    assert all(torch.equal(fresh[k], v) for k, v in _state(trainer.teacher).items())
    assert any(not torch.equal(fresh[k], student[k]) for k in fresh if fresh[k].is_floating_point())

    # round 1: nnU-Net's loss on labeled + pseudo-labeled patches; no unlabeled stream, gradient into the
    # student only, then the EMA teacher follows
    monkeypatch.setattr(trainer, "unlabeled_batch", lambda: (_ for _ in ()).throw(AssertionError("used")))
    trainer.on_train_epoch_start()
    step = trainer.step
    trainer.step = lambda: None
    out = trainer.train_step(next(trainer.dataloader_train))
    assert set(out) == {"loss", "sup_loss"} and trainer.ssl_log_keys == ("sup_loss",)
    assert sum(p.grad.abs().sum().item() for p in trainer.network.parameters() if p.grad is not None) > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    teacher_before = _state(trainer.teacher)
    step()
    assert any(not torch.equal(v, teacher_before[k]) for k, v in _state(trainer.teacher).items())
    trainer.on_train_end()


def test_cli_train_resume_predicts_with_the_round_1_teacher(dataset_2d, nnunet_env):
    run_cli("nnUNetv2_train", "801", "2d", "0", "-tr", STSGRS, "-device", "cpu")
    folder = os.path.join(nnunet_env["nnUNet_results"], "Dataset801_T2D", f"{STSGRS}__nnUNetPlans__2d", "fold_0")
    log = _latest_log(folder)
    assert "con_loss" in log.split("Round 1: pseudo labels")[0]  # round 0 logs SGRS's terms
    assert "Self-training round 1/1, epochs 1-1: training on 3 labeled + 6 pseudo-labeled cases" in log
    final = torch.load(os.path.join(folder, "checkpoint_final.pth"), weights_only=False)
    assert final["self_training_round"] == 1 and final["inference_weights"] == "teacher"
    for k, v in final["teacher_weights"].items():
        assert torch.equal(final["network_weights"][k], v)
    marker = json.load(open(os.path.join(folder, "self_training", "round_1", "complete.json")))
    source = torch.load(marker["source_checkpoint"], weights_only=False)
    assert source["self_training_round"] == 0 and "teacher_weights" in source
    assert os.path.isfile(os.path.join(folder, "validation", "summary.json"))
