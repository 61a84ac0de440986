"""The contract every trainer keeps, checked for each trainer class in trainers/ (new ones join automatically) and
the seam trainer(s) of tests/seam_trainers, on a tiny 2D and a tiny 3D plan, in process:

  * a few train_steps on CPU; every unsupervised term the trainer declares sends gradient into the network it
    trains, and every registered term none into the module that provides its target (the EMA teacher, or the
    other network);
  * save, then resume into a fresh trainer: networks, teacher, every optimizer, epoch, phase and SSL log equal;
  * for each inference choice, the model folder loads as nnUNetv2_predict loads it (nnUNetPredictor
    .initialize_from_trained_model_folder) and predicts a test case into a valid label map.
"""
import glob
import importlib
import inspect
import os
import pkgutil
import random

import numpy as np
import pytest
import torch

from conftest import SEAM_TRAINERS

STEPS = 2
EXTRA_STEPS = 6  # at most, only while a declared term has not reached its network yet


def trainer_names():
    import nnunet_ssl.trainers as package
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    names = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        names |= {name for name, cls in inspect.getmembers(module, inspect.isclass)
                  if issubclass(cls, nnUNetTrainer) and cls.__module__ == module.__name__}
    names |= {os.path.basename(f)[:-3] for f in glob.glob(os.path.join(SEAM_TRAINERS, "nnUNetTrainer*.py"))}
    return sorted(names)


FOLD = "all"  # the other tests of Dataset801 train folds 0-3 (and MT's fold all, from scratch)


def build(name, dataset, configuration):
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(dataset, configuration, FOLD, name, "nnUNetPlans", device=torch.device("cpu"))


def modules_by_name(trainer):
    from nnunet_ssl.architectures.common import unwrap
    modules = dict(trainer.optimized_modules())
    if trainer.teacher is not None:
        modules["teacher"] = unwrap(trainer.teacher)
    return modules


def target_provider(modules: dict, name: str):
    """A module of modules_by_name, or a submodule of one by its path ("network.heads.aspp": a head of a
    multi-head network whose argmax is another head's target)."""
    root, _, path = name.partition(".")
    return modules[root].get_submodule(path) if path else modules[root]


def check_terms_on_backward(trainer, reached: dict):
    """Wrap trainer.backward: before each backward, every pending unsupervised term must have a gradient path
    into the modules it trains (recorded in `reached`; non-zero in at least one step) and none into the module
    its target comes from."""
    original = trainer.backward

    def checked(loss):
        modules = modules_by_name(trainer)
        for term in trainer.pending_terms:
            if not term.value.requires_grad:  # no graph at all: trains nothing
                reached.setdefault(term.name, False)
                continue
            trained = [p for k in term.trains for p in modules[k].parameters() if p.requires_grad]
            grads = torch.autograd.grad(term.value, trained, retain_graph=True, allow_unused=True)
            reached[term.name] = reached.get(term.name, False) or any(
                g is not None and bool(g.abs().sum() > 0) for g in grads)
            if term.target_from is None:  # no other module provides the target
                continue
            provider = [p for p in target_provider(modules, term.target_from).parameters()]
            with_grad = [p for p in provider if p.requires_grad]
            if with_grad:
                grads = torch.autograd.grad(term.value, with_grad, retain_graph=True, allow_unused=True)
                assert all(g is None or not g.abs().sum() > 0 for g in grads), \
                    f"{term.name}: gradient reaches its target's provider {term.target_from}"
        original(loss)

    trainer.backward = checked


def states(trainer):
    from nnunet_ssl.architectures.common import unwrap
    out = {"network": unwrap(trainer.network).state_dict()}
    if trainer.teacher is not None:
        out["teacher"] = trainer.teacher.state_dict()
    for name, optimizer in trainer.optimizers.items():
        out[f"optimizer_{name}"] = optimizer.state_dict()["state"]
    return out


def assert_equal_states(a, b):
    assert a.keys() == b.keys()
    for part in a:
        assert a[part].keys() == b[part].keys(), part
        for key in a[part]:
            x, y = a[part][key], b[part][key]
            if isinstance(x, dict):
                for k in x:
                    assert torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])), (part, key, k)
            else:
                assert torch.equal(x, y), (part, key)


def predict_one(model_folder, image_file, checkpoint_name):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                perform_everything_on_device=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, use_folds=(FOLD,), checkpoint_name=checkpoint_name)
    reader = predictor.plans_manager.image_reader_writer_class()
    image, properties = reader.read_images([image_file])
    return predictor, image, predictor.predict_single_npy_array(image, properties)


# ablations that change a weighting or switch a stage off in code that their parent's 3D case already runs: 2D only,
# for the suite's time
TWO_D_ONLY = {"nnUNetTrainerUAMT_AMT", "nnUNetTrainerUAMT_LiteralWeighting", "nnUNetTrainerMIRAU_MeanTarget",
              "nnUNetTrainerMeanTeacherDropout", "nnUNetTrainerMeanTeacherLongRamp",
              "nnUNetTrainerMIRAU_NoUncertaintyMask", "nnUNetTrainerMIRAU_NoMIM", "nnUNetTrainerMIRAU_NoEntropy",
              "nnUNetTrainerMIRAU_MeanTargetDice", "nnUNetTrainerMIRAU_MeanTargetWeakView",
              "nnUNetTrainerMIRAU_MeanTargetLabeledMix", "nnUNetTrainerMIRAU_MeanTargetLabeledMixDice",
              "nnUNetTrainerSGRS_WeakMix", "nnUNetTrainerUAMT_LabeledMix",
              "nnUNetTrainerUAMT_LabeledMixFullWeight", "nnUNetTrainerDualNet_Paper"}
# a longer round 0 of self-training, nothing else: the suite's 2 epochs cannot hold its two rounds at these shares
# (tests/test_self_training.py checks their split of a real budget; the parent's contract covers their code)
NOT_IN_CONTRACT = {"nnUNetTrainerSelfTraining_Round0Share75", "nnUNetTrainerSelfTraining_Round0Share90",
                   "nnUNetTrainerDualNet_LabeledMix"}  # and the default DualNet's old name: the same class body


@pytest.mark.parametrize("name,dim", [(name, dim) for name in trainer_names() for dim in (2, 3)
                                      if (dim == 2 or name not in TWO_D_ONLY) and name not in NOT_IN_CONTRACT])
def test_trainer_contract(name, dim, request, nnunet_env):
    from nnunet_ssl.core.checkpoints import choices_in, set_inference_weights

    raw = request.getfixturevalue("dataset_2d" if dim == 2 else "contract_3d")
    dataset, configuration = ("801", "2d") if dim == 2 else ("812", "3d_fullres")
    # numpy's global state too (nnU-Net's augmentation, SGRS's mix-up lambda draw from it): otherwise the batches
    # depend on which tests ran before, and a term on a rare region may or may not occur within the steps below
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    trainer = build(name, dataset, configuration)
    trainer.on_train_start()
    reached = {}
    check_terms_on_backward(trainer, reached)
    try:
        declared = trainer.unsupervised_terms
        trainer.on_train_epoch_start()
        for _ in range(STEPS):
            out = trainer.train_step(next(trainer.dataloader_train))
            assert np.isfinite(out["loss"])
        # a declared term may belong to a later phase (MIRA-U's pretraining phase registers none): walk on into the
        # next phase (through the phase start a training makes) until every term was registered
        while not all(reached.get(t) for t in declared) and trainer.current_phase + 1 < len(trainer.phases()):
            trainer.current_epoch = trainer.phase_starts[trainer.current_phase + 1]
            trainer.on_epoch_start()
            trainer.on_train_epoch_start()
            for _ in range(STEPS):
                assert np.isfinite(trainer.train_step(next(trainer.dataloader_train))["loss"])
        # a term on a region of the predictions can be empty in an untrained network's first steps (SGRS's Theta,
        # confident but inconsistent voxels: empty in both of 2 steps in one CI run on 3 classes): a few more steps
        for _ in range(EXTRA_STEPS):
            if all(reached.get(t) for t in declared):
                break
            assert np.isfinite(trainer.train_step(next(trainer.dataloader_train))["loss"])
        # every declared term was registered and sent gradient into its network in some step (a variant may
        # register a term it switches off, e.g. an empty region; that one must still spare its target's provider)
        assert {t: reached.get(t) for t in declared} == dict.fromkeys(declared, True), \
            f"unsupervised terms registered / reaching their network: {reached}"
        if trainer.teacher is not None:
            assert all(p.grad is None for p in trainer.teacher.parameters())
        trainer.logger.log("train_losses", 0.5, 0)
        for key in trainer.ssl_log_keys:
            trainer.logger.log(key, 0.25, 0)
        saved_file = os.path.join(trainer.output_folder, "checkpoint_contract.pth")
        trainer.save_checkpoint(saved_file)
        saved = states(trainer)
    finally:
        trainer.on_train_end()  # writes checkpoint_final.pth, as at the end of a training

    restored = build(name, dataset, configuration)
    restored.load_checkpoint(saved_file)
    assert_equal_states(saved, states(restored))
    assert restored.current_epoch == trainer.current_epoch + 1  # nnU-Net stores the epoch to resume at
    assert restored.current_phase == trainer.current_phase
    for key in restored.ssl_log_keys:
        assert restored.logger.get_value(key, None) == [0.25]

    final = os.path.join(trainer.output_folder, "checkpoint_final.pth")
    model_folder = os.path.dirname(trainer.output_folder)
    image_file = sorted(glob.glob(os.path.join(raw, "imagesTs", "*")))[0]
    label_values = set(range(len(trainer.label_manager.all_labels)))
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    choices = choices_in(checkpoint)
    assert restored.inference_weights in choices and checkpoint["inference_weights"] == restored.inference_weights
    for choice_name, choice in choices.items():
        set_inference_weights(final, choice_name)
        predictor, image, seg = predict_one(model_folder, image_file, "checkpoint_final.pth")
        assert seg.shape == image.shape[1:] and set(np.unique(seg)) <= label_values, choice_name
        if choice.output_mix is not None:  # the mix reached the network nnUNetv2_predict runs
            assert predictor.network.output_mix.tolist() == list(choice.output_mix)


def test_term_check_catches_a_term_without_student_gradient(dataset_2d, nnunet_env, monkeypatch):
    """The contract's gradient check can fail: Mean Teacher's consistency computed teacher-vs-teacher (the bug a
    well-known SSL library shipped) sends no gradient into the student."""
    trainer = build("nnUNetTrainerMeanTeacher", "801", "2d")
    trainer.on_train_start()
    monkeypatch.setattr(trainer, "student_probabilities", trainer.teacher_probabilities)
    reached = {}
    check_terms_on_backward(trainer, reached)
    try:
        trainer.train_step(next(trainer.dataloader_train))
    except RuntimeError:  # autograd.grad: the term has no graph at all
        reached["consistency_loss"] = False
    finally:
        trainer.on_train_end()
    assert reached == {"consistency_loss": False}


@pytest.mark.parametrize("name", ["nnUNetTrainerSGRS", "nnUNetTrainerUAMT", "nnUNetTrainerDualNet",
                                  "nnUNetTrainerMIRAU"])
def test_class_map_methods_refuse_region_datasets(name, dataset_2d, monkeypatch):
    """Their targets are argmax class maps (or soft labels whose removed mass goes to background): a region-based
    (sigmoid) dataset gets a clear error before training starts."""
    from nnunet_ssl.utilities.inputs import UserError
    trainer = build(name, "801", "2d")
    monkeypatch.setattr(trainer.label_manager, "_has_regions", True)
    with pytest.raises(UserError, match="region-based"):
        trainer.on_train_start()
