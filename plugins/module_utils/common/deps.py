# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Import guards for every third-party library the collection uses, in this one file.

Each library is imported here inside ``try``. When it is missing, ``HAS_<LIB>`` is false, ``<LIB>_IMPORT_ERROR``
holds the traceback (for ``missing_required_lib``) and its names are placeholders, so every other file can be
imported anywhere (a node without zeroconf, ``ansible-test``'s import check) and imports the library's names
from here. Code about to use a library calls :func:`require`, which raises :class:`MissingDependency` naming
the package to install.
"""

from __future__ import annotations

import traceback

# The imports below are this module's interface: other files import the libraries' names from here.
# pylint: disable=unused-import


class MissingDependency(ImportError):
    """A third-party library needed for what was asked is not installed; the text names its package."""


class _Unavailable(Exception):
    """Stands in for a missing library's exception classes so ``except`` clauses stay valid."""


try:
    import nats
    import nats.js.api  # the service's JetStream key-value buckets
    import nats.js.errors
    from nats.errors import Error as NatsError

    HAS_NATS = True
    NATS_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - depends on the environment
    nats = None
    NatsError = _Unavailable
    HAS_NATS = False
    NATS_IMPORT_ERROR = traceback.format_exc()

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
    from cryptography.x509 import ocsp
    from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, ExtensionOID, NameOID

    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - depends on the environment
    x509 = ocsp = hashes = serialization = ec = ed448 = ed25519 = padding = rsa = None
    AuthorityInformationAccessOID = ExtendedKeyUsageOID = ExtensionOID = NameOID = None
    InvalidSignature = UnsupportedAlgorithm = _Unavailable
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()

try:
    from zeroconf import Error as ZeroconfError
    from zeroconf import IPVersion, NonUniqueNameException, RecordUpdateListener, ServiceInfo
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

    HAS_ZEROCONF = True
    ZEROCONF_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - depends on the environment
    IPVersion = ServiceInfo = AsyncServiceBrowser = AsyncZeroconf = None
    RecordUpdateListener = object  # a listener class must still be definable
    ZeroconfError = OSError
    NonUniqueNameException = _Unavailable
    HAS_ZEROCONF = False
    ZEROCONF_IMPORT_ERROR = traceback.format_exc()

try:
    import prometheus_client
    import prometheus_client.utils  # floatToGoString, for the service's exposition text

    HAS_PROMETHEUS_CLIENT = True
    PROMETHEUS_CLIENT_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - depends on the environment
    prometheus_client = None
    HAS_PROMETHEUS_CLIENT = False
    PROMETHEUS_CLIENT_IMPORT_ERROR = traceback.format_exc()

try:
    import jwt

    HAS_JWT = True
    JWT_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - depends on the environment
    jwt = None
    HAS_JWT = False
    JWT_IMPORT_ERROR = traceback.format_exc()

try:
    import yaml

    HAS_YAML = True
    YAML_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - depends on the environment
    yaml = None
    HAS_YAML = False
    YAML_IMPORT_ERROR = traceback.format_exc()

# import name -> (package to install, the traceback when it is missing)
LIBRARIES = {
    "nats": ("nats-py", NATS_IMPORT_ERROR),
    "cryptography": ("cryptography", CRYPTOGRAPHY_IMPORT_ERROR),
    "zeroconf": ("zeroconf", ZEROCONF_IMPORT_ERROR),
    "prometheus_client": ("prometheus-client", PROMETHEUS_CLIENT_IMPORT_ERROR),
    "jwt": ("PyJWT", JWT_IMPORT_ERROR),
    "yaml": ("PyYAML", YAML_IMPORT_ERROR),
}


def require(name: str, purpose: str = "") -> None:
    """Raise MissingDependency when library ``name`` (an import name of :data:`LIBRARIES`) is missing."""
    package, error = LIBRARIES[name]
    if error is not None:
        needed = f" {purpose}" if purpose else ""
        raise MissingDependency(f"the Python library {package} is required{needed}: {error}")
