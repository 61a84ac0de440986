"""Networks from nnU-Net's plans beside the plans' own one (nnUNetTrainer.build_network_architecture)."""
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

# nnU-Net's residual-encoder planners (nnUNetPlannerResEnc*): ResNet-34-like encoder blocks per stage
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6)


def residual_encoder_network(configuration_manager: ConfigurationManager, num_input_channels: int,
                             num_output_channels: int, deep_supervision: bool):
    """nnU-Net's ResidualEncoderUNet with the plans' stages, features, kernels, strides, norm and nonlinearity
    (so its outputs and deep-supervision levels match the plans' network), basic residual blocks per stage as
    nnU-Net's ResEnc planners give them, one conv per decoder stage."""
    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    n_stages = kwargs["n_stages"]
    if n_stages > len(RESENC_BLOCKS_PER_STAGE):
        raise ValueError(f"{n_stages} stages: more than the {len(RESENC_BLOCKS_PER_STAGE)} this builder knows")
    kwargs.pop("n_conv_per_stage", None)
    kwargs.update(n_blocks_per_stage=list(RESENC_BLOCKS_PER_STAGE[:n_stages]),
                  n_conv_per_stage_decoder=[1] * (n_stages - 1))
    name = f"{ResidualEncoderUNet.__module__}.{ResidualEncoderUNet.__name__}"
    return get_network_from_plans(name, kwargs, configuration_manager.network_arch_init_kwargs_req_import,
                                  num_input_channels, num_output_channels, allow_init=True,
                                  deep_supervision=deep_supervision)
