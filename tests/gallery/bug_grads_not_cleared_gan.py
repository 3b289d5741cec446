"""A GAN loop that zeroes the discriminator's optimizer but never the generator's: its grads pile up."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class GAN:
    def __init__(self, latent=2, features=4):
        self.latent = latent
        self.generator = nn.Sequential(nn.Linear(latent, 8), nn.ReLU(), nn.Linear(8, features))
        self.discriminator = nn.Sequential(nn.Linear(features, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.bce = nn.BCEWithLogitsLoss()

    def d_step(self, real, fake):
        self.opt_d.zero_grad()
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        loss_d = self.bce(self.discriminator(real), ones) + self.bce(self.discriminator(fake), zeros)
        loss_d.backward(retain_graph=True)
        self.opt_d.step()
        return loss_d.item()

    def g_step(self, fake):
        loss_g = self.bce(self.discriminator(fake), torch.ones(len(fake), 1))
        loss_g.backward()
        self.opt_g.step()  # expect: grads-not-cleared
        return loss_g.item()

    def train_step(self, real):
        fake = self.generator(torch.randn(len(real), self.latent))
        return self.d_step(real, fake), self.g_step(fake)


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=8, shuffle=True)
gan = GAN()
for epoch in range(3):
    for (real,) in loader:
        gan.train_step(real)
