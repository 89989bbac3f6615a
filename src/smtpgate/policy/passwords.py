"""Password policy for new passwords set through the CLI.

Three rules, each a ``[passwords]`` key: a minimum length; no password equal to
or containing the account name or its local part; and a minimum strength as
estimated by zxcvbn (Dropbox's estimator, which knows the common-password
lists, keyboard patterns, dates, l33t substitutions and English words). A
hand-made list of bad passwords would know a few dozen; zxcvbn's dictionaries
hold tens of thousands and its score is what NIST SP 800-63B §5.1.1.2 asks a
verifier to approximate ("passwords obtained from previous breach corpuses,
dictionary words, repetitive or sequential characters").

The policy applies where an administrator types a password (``user add``,
``user passwd``); the store itself only refuses passwords no client could
send (``auth/passwords.check_new_password``), so that imports and tests that
need a weak password can still make one through the library.
"""

from __future__ import annotations

from smtpgate.auth.passwords import PasswordPolicyError, check_new_password
from smtpgate.config import PasswordsConfig

#: zxcvbn's cost grows with the length; past this many characters a password
#: is long enough that only its prefix needs scoring. 72 is zxcvbn 4.5's own
#: limit (``max_length``): a longer string raises ValueError there, which was a
#: traceback of ``user add`` for a 73-character passphrase.
ZXCVBN_MAX_CHARS = 72
#: A local part shorter than this ("a@x") is too short to be a meaningful
#: substring of a password; the whole address is still checked.
MIN_LOCAL_CHECKED = 3


def check_password_policy(password: str, username: str, cfg: PasswordsConfig) -> None:
    """Refuse a new ``password`` for account ``username`` that breaks the policy.

    Raises:
        PasswordPolicyError: the message says which rule, and zxcvbn's advice.
    """
    check_new_password(password)
    if len(password) < cfg.min_length:
        raise PasswordPolicyError(
            f"the password is shorter than {cfg.min_length} characters ([passwords].min_length)"
        )
    local, _, domain = username.rpartition("@")
    lowered = password.casefold()
    if cfg.reject_username and username:
        parts = [username] + ([local] if len(local) >= MIN_LOCAL_CHECKED else [])
        for part in parts:
            if part.casefold() in lowered:
                raise PasswordPolicyError("the password contains the account name")
    if cfg.min_strength > 0:
        inputs = [p for p in (username, local, *domain.split(".")) if p]
        # Imported here: its dictionaries are 14 MB, which serving processes
        # never need (workload D).
        from zxcvbn import zxcvbn

        # A line break scored as a space: zxcvbn's date matcher (``^\d{4,8}$``,
        # whose ``$`` also matches before a final newline) raised ValueError for
        # "1234" followed by a line break, a traceback of ``admin add``.
        scored = password[:ZXCVBN_MAX_CHARS].replace("\n", " ")
        result = zxcvbn(scored, user_inputs=inputs)
        score = int(result["score"])
        if score < cfg.min_strength:
            feedback = result.get("feedback") or {}
            advice = str(feedback.get("warning") or "").strip()
            hint = " ".join(str(x) for x in feedback.get("suggestions") or [])
            why = " ".join(x for x in (advice, hint) if x) or "it is easy to guess"
            raise PasswordPolicyError(
                f"the password is too weak (strength {score} of 4, "
                f"[passwords].min_strength is {cfg.min_strength}): {why}"
            )
