"""Networks (plain ``nn.Module``s) and the one image-classification LightningModule."""
from infoprune.models.alexnet import AlexNet
from infoprune.models.lenet import LeNet5
from infoprune.models.resnet import CifarResNet
from infoprune.models.simplenet import SimpleNet
from infoprune.models.vgg import VGG16BN

__all__ = ["AlexNet", "CifarResNet", "LeNet5", "SimpleNet", "VGG16BN"]
