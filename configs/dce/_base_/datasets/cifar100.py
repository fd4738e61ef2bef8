# CIFAR-100 as cifar10.py (mean / std as mmpretrain's cifar100_bs16); labels are the 100 fine
# classes.
_base_ = 'mmpretrain::_base_/datasets/cifar100_bs16.py'
dataset_type = 'SafeCIFAR100'
train_dataloader = dict(batch_size=64, dataset=dict(type=dataset_type))
val_dataloader = dict(batch_size=64, dataset=dict(type=dataset_type))
test_dataloader = val_dataloader
