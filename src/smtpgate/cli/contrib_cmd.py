"""``smtpgate contrib NAME``: print a file for the system around smtpgate.

The systemd unit, fail2ban filter and jail, logrotate stanza, certbot hook and
Grafana dashboard ship inside the package (``smtpgate/contrib/``; the repository's ``contrib/``
is the same directory), so an installed smtpgate can write them out without a
source checkout. Each agrees with the production layout of the README.
"""

from __future__ import annotations

from importlib import resources

import click

#: name -> (file inside smtpgate/contrib/, where it is installed)
FILES: dict[str, tuple[str, str]] = {
    "systemd": ("smtpgate.service", "/etc/systemd/system/smtpgate.service"),
    "fail2ban-filter": ("fail2ban/filter.d/smtpgate.conf", "/etc/fail2ban/filter.d/smtpgate.conf"),
    "fail2ban-jail": ("fail2ban/jail.d/smtpgate.local", "/etc/fail2ban/jail.d/smtpgate.local"),
    "logrotate": ("logrotate.d/smtpgate", "/etc/logrotate.d/smtpgate"),
    "certbot-hook": (
        "certbot/smtpgate-deploy-hook",
        "/etc/letsencrypt/renewal-hooks/deploy/smtpgate",
    ),
    "grafana": ("grafana/smtpgate-dashboard.json", "Grafana: Dashboards > New > Import"),
}


def contrib_text(name: str) -> str:
    """The text of contrib file ``name`` (a key of ``FILES``)."""
    resource = resources.files("smtpgate").joinpath("contrib", *FILES[name][0].split("/"))
    return resource.read_text(encoding="utf-8")


@click.command()
@click.argument("name", required=False, type=click.Choice(sorted(FILES)))
def contrib(name: str | None) -> None:
    """Print the contrib file NAME (redirect it to where it belongs); without NAME,
    list them with their usual places."""
    if name is None:
        width = max(map(len, FILES))
        for key, (_, target) in FILES.items():
            click.echo(f"{key:<{width}}  {target}")
        return
    click.echo(contrib_text(name), nl=False)


COMMANDS: list[click.Command] = [contrib]
