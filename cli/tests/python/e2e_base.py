# The `kubernetes.e2e_test.base` module the client's own e2e tests import, for Drover: the
# client's source distribution carries the tests of its dynamic client but not this module
# (it lives in the client's Git repository, where it finds a cluster through ~/.kube/config or
# localhost:8080). Here the cluster is the kubeconfig named by $KUBECONFIG.
import os

from kubernetes.client.configuration import Configuration
from kubernetes.config import kube_config


def get_e2e_configuration():
    config = Configuration()
    kube_config.load_kube_config(
        config_file=os.environ["KUBECONFIG"], client_configuration=config)
    return config
