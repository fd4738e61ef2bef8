# CIFAR-10 as Spasov & Lio train it (Sec. 3.1, 3.3): 50,000 train / 10,000 test images,
# normalised by the channel means and stds, pad-4 random crop + horizontal flip, batch 64.
# mmmod's SafeCIFAR10 reads the official python batches without unpickling code (mmpretrain's
# CIFAR10 runs pickle.load on them); same files, folders and md5 checks (verify_md5=False only
# for generated data).
_base_ = 'mmpretrain::_base_/datasets/cifar10_bs16.py'
dataset_type = 'SafeCIFAR10'
train_dataloader = dict(batch_size=64, dataset=dict(type=dataset_type))
val_dataloader = dict(batch_size=64, dataset=dict(type=dataset_type))
test_dataloader = val_dataloader
