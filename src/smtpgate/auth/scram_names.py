"""Account names a SCRAM client can send.

A SCRAM client prepares the user name with SASLprep before it sends it (RFC 5802
§5.1, query rules; GNU SASL, so gsasl, msmtp, mutt and neomutt, always does), and
the server looks up what arrives. SASLprep's NFKC turns compatibility characters
into others: ``ﬁsh@`` (the U+FB01 ligature) arrives as ``fish@``, a full-width
``ａ`` as ``a``. An account named with one could log in with PLAIN, which sends the
name as typed, but never with SCRAM: the client's name is another account's, or
nobody's. Such a name is refused when an account is made (``admin.py``), with the
spelling SCRAM clients would use.

A name SASLprep refuses outright (a right-to-left local part beside a
left-to-right domain, RFC 3454 §6) is not refused here: those clients then refuse
to send it and say why, while PLAIN, LOGIN and OAuth work, and a site whose users
have such names cannot choose others (docs/accounts.md).
"""

from __future__ import annotations

from smtpgate.auth.names import lookup_key
from smtpgate.sasl.saslprep import SaslprepError, saslprep


def scram_spelling(key: str) -> str:
    """The account name a SCRAM client sends for the canonical name ``key``, made
    canonical; ``key`` itself when SASLprep refuses it (see the module docstring)."""
    try:
        prepared = saslprep(key, allow_unassigned=True)
    except SaslprepError:
        return key
    return lookup_key(prepared) if prepared else key
