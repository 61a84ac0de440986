"""nnUNetTrainerMeanTeacher: the step, its gradients, checkpoints, and the stock nnU-Net CLIs end to end."""
import glob
import os

import pytest
import torch

from conftest import predict_test_set_2d, train_in_process

MT = "nnUNetTrainerMeanTeacher"


def make_trainer(name, dataset="801", configuration="2d", fold=0):
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(dataset, configuration, fold, name, "nnUNetPlans", device=torch.device("cpu"))


def _clone(batch):
    return {k: ([t.clone() for t in v] if isinstance(v, list) else v.clone() if torch.is_tensor(v) else v)
            for k, v in batch.items()}


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_consistency_term_trains_student_and_never_teacher(dataset_2d):
    torch.manual_seed(0)
    trainer = make_trainer(MT)
    trainer.on_train_start()
    trainer.consistency_weight, trainer.consistency_rampup = 1.0, 0.0  # full weight from step 0
    # make teacher and student differ, as after some training, and isolate the unsupervised term
    trainer.teacher.update(trainer.network, step=1000)
    with torch.no_grad():
        for p in trainer.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.loss = lambda output, target: 0.0 * output[0].sum()
    out = trainer.train_step(next(trainer.dataloader_train))
    assert out["consistency_loss"] > 0 and out["sup_loss"] == 0
    student_grad = sum(p.grad.abs().sum().item() for p in trainer.network.parameters() if p.grad is not None)
    assert student_grad > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    trainer.on_train_end()


def test_zero_consistency_weight_behaves_like_nnunet_trainer(dataset_2d):
    torch.manual_seed(0)
    baseline = make_trainer("nnUNetTrainer")
    baseline.initialize()
    mt = make_trainer(MT)
    mt.on_train_start()
    mt.consistency_weight = 0.0
    mt.network.load_state_dict(baseline.network.state_dict())
    batch = next(mt.dataloader_train)
    out_base = baseline.train_step(_clone(batch))
    out_mt = mt.train_step(_clone(batch))
    assert float(out_mt["loss"]) == pytest.approx(float(out_base["loss"]), rel=1e-5)
    for (name, p_base), p_mt in zip(baseline.network.named_parameters(), mt.network.parameters()):
        torch.testing.assert_close(p_mt, p_base, rtol=1e-4, atol=1e-6, msg=name)
    mt.on_train_end()


def test_checkpoint_restores_student_teacher_and_ssl_log(dataset_2d, tmp_path):
    torch.manual_seed(0)
    trainer = make_trainer(MT)
    trainer.on_train_start()
    for _ in range(2):
        trainer.train_step(next(trainer.dataloader_train))
    trainer.logger.log("sup_loss", 0.5, 0)
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    student, teacher = _state(trainer.network), _state(trainer.teacher)
    trainer.on_train_end()
    assert any(not torch.equal(student[k], teacher[k]) for k in student)

    restored = make_trainer(MT)
    restored.load_checkpoint(path)
    for k in student:
        torch.testing.assert_close(restored.network.state_dict()[k], student[k])
        torch.testing.assert_close(restored.teacher.state_dict()[k], teacher[k])
    assert restored.logger.get_value("sup_loss", None) == [0.5]
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["inference_weights"] == "teacher"
    for k in teacher:
        torch.testing.assert_close(checkpoint["network_weights"][k], teacher[k])


def _model_folder(nnunet_env, dataset, configuration, fold):
    return os.path.join(nnunet_env["nnUNet_results"], dataset, f"{MT}__nnUNetPlans__{configuration}", f"fold_{fold}")


def _latest_log(folder):
    return open(sorted(glob.glob(os.path.join(folder, "training_log_*.txt")))[-1]).read()


def test_train_validate_predict_as_the_stock_clis_do(dataset_2d, nnunet_env, tmp_path, capsys):
    """nnUNetv2_train and nnUNetv2_predict as those commands run once they have parsed their arguments, in process
    (the commands themselves for Mean Teacher, killed and continued: tests/test_faults.py)."""
    from nnunet_ssl.commands.cli import main

    train_in_process("801", "2d", "0", MT)
    folder = _model_folder(nnunet_env, "Dataset801_T2D", "2d", 0)
    log = _latest_log(folder)
    assert "sup_loss" in log and "consistency_loss" in log and "consistency_weight" in log
    assert "Final validation with the teacher weights" in log
    assert os.path.isfile(os.path.join(folder, "validation", "summary.json"))
    assert os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))
    assert os.path.getsize(os.path.join(folder, "progress_ssl.png")) > 5000  # the SSL keys' curves

    # --c after a kill -9: tests/test_faults.py
    out = tmp_path / "pred"
    predict_test_set_2d(dataset_2d, out, MT, in_process=True)

    # switch prediction to the student weights
    capsys.readouterr()
    main(["set-inference-weights", "-d", "801", "-c", "2d", "-tr", MT, "-f", "0", "--use", "student"])
    assert "teacher -> student" in capsys.readouterr().out
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), weights_only=False)
    for k, v in checkpoint["ssl_weights"]["student"].items():
        assert torch.equal(checkpoint["network_weights"][k], v)


def test_3d_missing_pool_fails_fast(contract_3d, nnunet_env, capsys):
    """Without a preprocessed pool nnUNetv2_train's training stops before any epoch, naming the folder and the
    command that makes it. (3D training and prediction of every trainer: tests/test_contract.py.)"""
    from nnunet_ssl.data.pool import UnlabeledPoolError

    pool = os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset812_T3D", "nnUNetPlans_3d_fullres_unlabeled")
    os.replace(pool, pool + ".aside")
    try:
        with pytest.raises(UnlabeledPoolError) as error:
            train_in_process("812", "3d_fullres", "all", MT)
    finally:
        os.replace(pool + ".aside", pool)
    output = str(error.value) + capsys.readouterr().out
    assert "nnUNetPlans_3d_fullres_unlabeled does not exist" in output
    assert "nnunet_ssl preprocess-unlabeled -d Dataset812_T3D -c 3d_fullres" in output
    assert "Epoch 0" not in output
