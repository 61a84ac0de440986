"""AMP: what CUDA's autocast computes in half precision must not reach the entropies, logs, softmaxes and squared
errors of the unsupervised terms. CPU autocast (bfloat16) leaves softmax, log and xlogy in half precision as CUDA's
float16 autocast would not for every op, so it shows a missing float32 cast; and the grad scaler (CPU's, the same
class CUDA uses) must scale every loss term once and unscale every optimizer before its clip."""
from types import SimpleNamespace

import pytest
import torch

HALF = torch.bfloat16


def half_logits(classes=3, batch=2, size=8):
    """Logits as a network's last conv gives them under autocast, and a label map."""
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=HALF):
        logits = torch.nn.Conv2d(1, classes, 3, padding=1)(torch.randn(batch, 1, size, size))
    assert logits.dtype == HALF
    return logits, torch.randint(0, classes, (batch, size, size))


@pytest.mark.parametrize("regions", [False, True])
def test_component_outputs_are_float32_under_autocast(regions):
    from nnunet_ssl.architectures.multi_output import mix_probabilities
    from nnunet_ssl.components.losses import consistency_mse
    from nnunet_ssl.components.regional import (normalized_entropy, regional_cross_entropy, regional_dice_loss,
                                                 synergy_regions)
    from nnunet_ssl.core.trainer import nnUNetTrainerSSL

    logits, labels = half_logits()
    fake = SimpleNamespace(label_manager=SimpleNamespace(has_regions=regions))
    with torch.autocast("cpu", dtype=HALF):
        probs = nnUNetTrainerSSL.probabilities(fake, logits)
        other = nnUNetTrainerSSL.probabilities(fake, logits.detach().flip(-1))
        region = synergy_regions(probs, other, 0.9).consistent
        outputs = {"probabilities": probs, "consistency_mse": consistency_mse(probs, other.detach()),
                   "normalized_entropy": normalized_entropy(probs),
                   "regional_cross_entropy": regional_cross_entropy(probs, labels, region, 0.2),
                   "regional_dice_loss": regional_dice_loss(probs, labels, region, 20.0),
                   "mix_probabilities": mix_probabilities([logits, logits.flip(-1)], [0.5, 0.5], regions)}
    assert {k: v.dtype for k, v in outputs.items()} == dict.fromkeys(outputs, torch.float32)
    # and computed from float32 values: the same as without autocast on the same logits
    with torch.no_grad():
        reference = nnUNetTrainerSSL.probabilities(fake, logits.float())
    torch.testing.assert_close(probs, reference)
    torch.testing.assert_close(outputs["normalized_entropy"], normalized_entropy(reference))


# SGRS: the most float32-sensitive step (entropies, logs, Dice of probabilities); Mean Teacher's MSE is checked above
@pytest.mark.parametrize("name", ["nnUNetTrainerSGRS"])
def test_train_step_under_autocast_and_grad_scaler(name, dataset_2d, nnunet_env):
    """The trainer's step with CPU autocast and a grad scaler in place of CUDA's: the network runs in half
    precision, every probability and unsupervised term is float32, every loss term is scaled once, each optimizer
    unscaled before its clip and the scaler updated once per step."""
    from test_mean_teacher import make_trainer
    from torch.amp import GradScaler

    trainer = make_trainer(name)
    trainer.on_train_start()
    try:
        trainer.autocast = lambda: torch.autocast("cpu", dtype=HALF)
        trainer.grad_scaler = scaler = GradScaler("cpu", init_scale=2.0 ** 8)
        seen = {"network": set(), "probabilities": set(), "terms": set(), "scale": 0, "unscale": 0, "update": 0}
        trainer.network.register_forward_hook(
            lambda m, i, out: seen["network"].add((out[0] if isinstance(out, list) else out).dtype))
        probabilities, term = trainer.probabilities, trainer.unsupervised_term
        trainer.probabilities = lambda z: (lambda p: (seen["probabilities"].add(p.dtype), p)[1])(probabilities(z))
        trainer.unsupervised_term = lambda n, v, *a, **k: (seen["terms"].add((n, v.dtype)), term(n, v, *a, **k))[1]
        for method in ("scale", "unscale_", "update"):
            real = getattr(scaler, method)
            setattr(scaler, method, lambda *a, _real=real, _key=method.rstrip("_"), **k:
                    (seen.__setitem__(_key, seen[_key] + 1), _real(*a, **k))[1])
        backwards = []
        backward = trainer.backward
        trainer.backward = lambda loss: (backwards.append(loss.dtype), backward(loss))[1]
        before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
        trainer.on_train_epoch_start()
        out = trainer.train_step(next(trainer.dataloader_train))
    finally:
        trainer.on_train_end()
    assert seen["network"] == {HALF}  # autocast was on
    assert seen["probabilities"] == {torch.float32}
    assert {dtype for _, dtype in seen["terms"]} == {torch.float32}
    assert {n for n, _ in seen["terms"]} == set(trainer.unsupervised_terms)
    assert backwards and set(backwards) == {torch.float32}
    assert (seen["scale"], seen["unscale"], seen["update"]) == (len(backwards), len(trainer.optimizers), 1)
    assert torch.isfinite(torch.as_tensor(out["loss"])).all()
    assert any(not torch.equal(before[k], v) for k, v in trainer.network.state_dict().items())  # it stepped
