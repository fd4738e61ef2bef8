# Spasov & Lio Sec. 3.3: SGD, Nesterov momentum 0.9 without dampening, weight decay 1e-4, batch
# 64, lr 0.1 divided by 10 at 50% and 75% of the epochs: 160 on CIFAR (sgd_20e.py: SVHN).
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, dampening=0, nesterov=True,
                   weight_decay=1e-4))
max_epochs = 160
param_scheduler = dict(type='MultiStepLR', by_epoch=True, milestones=[80, 120], gamma=0.1)
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=64)
