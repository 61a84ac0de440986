"""nnUNetTrainerSelfTrainingSGRS: round 0 is SGRS, its EMA teacher pseudo-labels the pool, round 1 is supervised.

conftest's budget (2 epochs x 3 iterations): round 0 is epoch 0, round 1 epoch 1.
"""
import os

import torch

from test_mean_teacher import make_trainer
from test_self_training import _state

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

    # the checkpoint nnUNetv2_predict reads holds the round-1 teacher; --c restores round, student and teacher
    path = os.path.join(trainer.output_folder, "checkpoint_test.pth")
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["phase"] == 1 and checkpoint["inference_weights"] == "teacher"
    for k, v in _state(trainer.teacher).items():
        assert torch.equal(checkpoint["network_weights"][k], v)
    resumed = make_trainer(STSGRS, fold=1)
    resumed.initialize()
    resumed.load_checkpoint(path)
    assert resumed.current_round == 1 and resumed.ssl_log_keys == ("sup_loss",)
    for mine, theirs in ((trainer.network, resumed.network), (trainer.teacher, resumed.teacher)):
        other = _state(theirs)
        assert all(torch.equal(v, other[k]) for k, v in _state(mine).items())
    trainer.on_train_end()
