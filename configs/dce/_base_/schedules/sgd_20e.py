# sgd_160e.py's recipe for SVHN's 20 epochs (lr / 10 at 50% and 75%).
_base_ = './sgd_160e.py'
max_epochs = 20
param_scheduler = dict(type='MultiStepLR', by_epoch=True, milestones=[10, 15], gamma=0.1)
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
