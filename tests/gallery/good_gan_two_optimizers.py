"""A GAN: generator and discriminator, each with its own optimizer and per-epoch scheduler."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=8, shuffle=True)
generator = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4))
discriminator = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
sched_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=2, gamma=0.5)
sched_d = torch.optim.lr_scheduler.StepLR(opt_d, step_size=2, gamma=0.5)
bce = nn.BCEWithLogitsLoss()

for epoch in range(3):
    for (real,) in loader:
        fake = generator(torch.randn(real.shape[0], 2))
        discriminator.zero_grad()
        loss_d = bce(discriminator(real), torch.ones(len(real), 1)) + bce(discriminator(fake.detach()),
                                                                          torch.zeros(len(real), 1))
        loss_d.backward()
        opt_d.step()
        generator.zero_grad()
        loss_g = bce(discriminator(fake), torch.ones(len(real), 1))
        loss_g.backward()
        opt_g.step()
    sched_d.step()
    sched_g.step()
