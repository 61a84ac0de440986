"""One rank of tests/test_ddp.py: the SSL trainers' own code under torch DDP, with gloo on CPU.

    python ddp_worker.py RANK WORLD_SIZE RENDEZVOUS_FILE OUT_FOLDER

nnU-Net's DDP path hard-codes CUDA in two places, patched here and nowhere else: nnUNetTrainer.__init__ sets
device cuda:<rank> (and a CUDA grad scaler) whenever a process group exists, and initialize() wraps the network in
DDP(network, device_ids=[rank]), which a CPU module refuses. Everything else (per-rank batch size, the DDP
wrapping, the Dice loss's all-gather, the epoch-end all_gather_object of the losses, validation's all-gathers,
rank-0 checkpoints, barriers) is nnU-Net's and the SSL core's own code, run through trainer.run_training().

Each rank writes <OUT_FOLDER>/<case>_rank<RANK>.pt: its student and teacher weights after training, the unlabeled
case ids it drew, its per-iteration logged values, what the logger holds, and the checkpoints it wrote."""
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

FOLD = 0
DATASET, CONFIGURATION = "801", "2d"


def cpu_ddp():
    """The two CUDA-specific lines of nnU-Net's DDP path, made CPU ones (see the module docstring)."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer
    ddp = nnunet_trainer.DDP
    nnunet_trainer.DDP = lambda network, device_ids=None, **kwargs: ddp(network, **kwargs)


def build(trainer_class):
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(DATASET))
    plans = {**load_json(join(folder, "nnUNetPlans.json")), "continue_training": False}  # as get_trainer_from_args
    trainer = trainer_class(plans=plans, configuration=CONFIGURATION,
                            fold=FOLD, dataset_json=load_json(join(folder, "dataset.json")),
                            device=torch.device("cpu"))
    assert trainer.is_ddp and trainer.device.type == "cuda"  # nnU-Net's DDP path, as on GPUs
    trainer.device, trainer.grad_scaler = torch.device("cpu"), None
    trainer.save_every = 1
    # the progress plots (rank 0) cost a second an epoch and are no part of DDP
    trainer.logger.plot_progress_png = trainer.plot_ssl_progress = lambda *args: None
    return trainer


def record(trainer, writes):
    """Record the unlabeled case ids drawn and each step's logged values (the trainer's own code runs)."""
    drawn, steps = [], []
    unlabeled_batch, train_step = trainer.unlabeled_batch, trainer.train_step

    def recording_unlabeled_batch():
        batch = next(trainer.dataloader_unlabeled)
        drawn.append([str(k) for k in batch["keys"]])
        return batch["data"].to(trainer.device)

    def recording_train_step(batch):
        out = train_step(batch)
        steps.append({key: float(np.mean(out[key])) for key in trainer.ssl_log_keys})
        return out

    assert unlabeled_batch is not None
    trainer.unlabeled_batch, trainer.train_step = recording_unlabeled_batch, recording_train_step
    return {"drawn": drawn, "steps": steps, "writes": writes}


def result(trainer, recorded):
    from nnunet_ssl.architectures.common import unwrap
    logged = trainer.logger.local_logger.my_fantastic_logging
    return {**recorded, "student": {k: v.clone() for k, v in unwrap(trainer.network).state_dict().items()},
            "teacher": None if trainer.teacher is None else {k: v.clone() for k, v in
                                                             trainer.teacher.state_dict().items()},
            "logged": {k: list(logged[k]) for k in ("train_losses",) + tuple(trainer.ssl_log_keys)},
            "batch_size": trainer.batch_size, "wrapped": type(trainer.network).__name__,
            "epoch": trainer.current_epoch}


def gradient_error(trainer, rank: int) -> float:
    """Largest difference between DDP's gradient and the mean over the ranks of each rank's own gradient, for a
    step's two backward passes: one through every deep-supervision output (the labeled loss), one through the
    full-resolution output only (an unsupervised term). Each rank its own inputs."""
    from nnunet_ssl.architectures.common import full_resolution, unwrap
    generator = torch.Generator().manual_seed(1000 + rank)
    x_l, x_u = (torch.randn(2, trainer.num_input_channels, 48, 48, generator=generator) for _ in range(2))

    def gradients(network):
        trainer.zero_grad()
        sum(o.float().pow(2).mean() for o in network(x_l)).backward()
        full_resolution(network(x_u)).float().pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in unwrap(network).named_parameters()}

    own = gradients(unwrap(trainer.network))  # not through DDP: this rank's gradient
    for g in own.values():
        dist.all_reduce(g)
        g /= dist.get_world_size()
    synced = gradients(trainer.network)
    trainer.zero_grad()
    return max(float((synced[n] - own[n]).abs().max() / (own[n].abs().max() + 1e-12)) for n in own)


def train(name, trainer_class, out, rank, resume_from=None, epochs=1):
    import nnunet_ssl.core.trainer as core
    os.environ["nnUNet_ssl_epochs"] = str(epochs)
    writes = []
    write_checkpoint = core.write_checkpoint
    core.write_checkpoint = lambda checkpoint, filename: (writes.append(os.path.basename(filename)),
                                                          write_checkpoint(checkpoint, filename))
    try:
        trainer = build(trainer_class)
        trainer.initialize()
        error = gradient_error(trainer, rank) if name == "mt" else None
        loaded = None
        if resume_from:
            trainer.load_checkpoint(resume_from)
            loaded = result(trainer, {})
        recorded = record(trainer, writes)
        trainer.run_training()
        torch.save({**result(trainer, recorded), "loaded": loaded, "gradient_error": error, "output_folder": trainer.output_folder},
                   os.path.join(out, f"{name}_rank{rank}.pt"))
        return trainer
    finally:
        core.write_checkpoint = write_checkpoint
        dist.barrier()  # rank 0's checkpoints are on disk before any rank reads them


def main(rank: int, world_size: int, rendezvous: str, out: str):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    cpu_ddp()
    # independent random streams per rank, as the processes nnU-Net's run_ddp spawns have (nnU-Net seeds nothing)
    np.random.seed(rank)
    torch.manual_seed(100 + rank)
    from nnunet_ssl.core.phases import Phase
    from nnunet_ssl.core.trainer import DDPUnsupportedError
    from nnunet_ssl.trainers.nnUNetTrainerMeanTeacher import nnUNetTrainerMeanTeacher
    from nnunet_ssl.trainers.nnUNetTrainerSGRS import nnUNetTrainerSGRS
    from nnunet_ssl.trainers.nnUNetTrainerSelfTraining import nnUNetTrainerSelfTraining
    from nnunet_ssl.trainers.nnUNetTrainerUAMT import nnUNetTrainerUAMT
    from nnunet_ssl.trainers.nnUNetTrainerDualNet import nnUNetTrainerDualNet

    class nnUNetTrainerMeanTeacherFreshPhase(nnUNetTrainerMeanTeacher):
        """A second phase with fresh weights (self-training's rounds): a new initialisation on every rank."""
        def phases(self):
            return [Phase("first", 0.5), Phase("fresh", 0.5, fresh_weights=True)]

    mean_teacher = train("mt", nnUNetTrainerMeanTeacher, out, rank, epochs=1)
    final = os.path.join(mean_teacher.output_folder, "checkpoint_final.pth")
    train("mt_resumed", nnUNetTrainerMeanTeacher, out, rank, resume_from=final, epochs=2)
    train("sgrs", nnUNetTrainerSGRS, out, rank)
    train("dualnet", nnUNetTrainerDualNet, out, rank)  # two networks, two optimizers, a winner agreed by all
    train("uamt", nnUNetTrainerUAMT, out, rank)  # two heads, two optimizer steps per iteration
    train("fresh_phase", nnUNetTrainerMeanTeacherFreshPhase, out, rank, epochs=2)
    try:
        build(nnUNetTrainerSelfTraining).on_train_start()
        refusal = None
    except DDPUnsupportedError as e:
        refusal = str(e)
    torch.save({"refusal": refusal}, os.path.join(out, f"self_training_rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
