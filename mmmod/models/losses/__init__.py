from .gate_losses import BatchActivationLoss, FLOPsActivationLoss

__all__ = ['BatchActivationLoss', 'FLOPsActivationLoss']
