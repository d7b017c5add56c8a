"""Networks (plain ``nn.Module``s) and the one image-classification LightningModule."""
from models.alexnet import AlexNet
from models.lenet import LeNet5
from models.resnet import CifarResNet
from models.simplenet import SimpleNet
from models.vgg import VGG16BN

__all__ = ["AlexNet", "CifarResNet", "LeNet5", "SimpleNet", "VGG16BN"]
