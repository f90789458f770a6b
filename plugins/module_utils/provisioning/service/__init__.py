# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The provisioner service (``zeroinit-provisioner``). ``SITE_OPERATIONS`` lives here, apart from the service's code,
so choria_provision's argument spec does not import the service to name its actions."""

SITE_OPERATIONS = ("pause", "resume", "status")
