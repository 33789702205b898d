"""The users' pure core: names, limits, secrets and what a session of a user stores."""

from __future__ import annotations

import hashlib

import pytest

from llama_direct.tokens import OWNER
from llama_direct.users import (
    API_KEY,
    LOGIN,
    MAX_LIMIT,
    MAX_NAME_LENGTH,
    Limits,
    User,
    UserError,
    is_user_id,
    looks_like_user_secret,
    new_secrets,
    new_user,
    new_user_id,
    normalise_name,
    parse_models,
    parse_session_subject,
    secret_kind,
    session_subject,
    with_limits,
)


class TestNames:
    @pytest.mark.parametrize("raw", ["Ann", "ANN", " ann ", "Ａｎｎ", "ａnn"])
    def test_case_width_and_spaces_around_make_one_name(self, raw: str) -> None:
        assert normalise_name(raw) == "ann"

    def test_casefolding_is_unicode_aware(self) -> None:
        assert normalise_name("Straße") == normalise_name("STRASSE") == "strasse"

    def test_letters_of_any_script_and_a_few_separators_are_kept(self) -> None:
        assert normalise_name("Zoë.O-b_c@d+e") == "zoë.o-b_c@d+e"
        assert normalise_name("Юля") == "юля"

    @pytest.mark.parametrize("raw", ["", "   ", "a b", "a\nb", "a\x00", "a/b", "a:b", "a\u202eb", "ann;rm"])
    def test_spaces_controls_and_other_punctuation_are_refused(self, raw: str) -> None:
        with pytest.raises(UserError):
            normalise_name(raw)

    def test_the_length_is_bounded_after_normalisation(self) -> None:
        assert normalise_name("a" * MAX_NAME_LENGTH) == "a" * MAX_NAME_LENGTH
        with pytest.raises(UserError, match="at most"):
            normalise_name("a" * (MAX_NAME_LENGTH + 1))
        with pytest.raises(UserError, match="at most"):
            normalise_name("ﬃ" * 30)  # 30 ligatures, 90 letters once NFKC spells them out


class TestLimits:
    def test_none_is_no_bound(self) -> None:
        limits = Limits()
        assert limits.allows_model("anything") and limits.cap(4096) == 4096

    def test_models_and_max_tokens_bound(self) -> None:
        limits = Limits(models=("a", "b"), max_tokens=100)
        assert limits.allows_model("b") and not limits.allows_model("c")
        assert (limits.cap(4096), limits.cap(50)) == (100, 50)

    @pytest.mark.parametrize("field", ["tokens_per_day", "tokens_per_minute", "streams", "max_tokens"])
    @pytest.mark.parametrize("value", [0, -1, MAX_LIMIT + 1, True, 1.5, "5"])
    def test_a_bound_is_a_whole_number_in_range(self, field: str, value: object) -> None:
        with pytest.raises(UserError, match=field.replace("_", "-")):
            Limits(**{field: value})  # type: ignore[arg-type]

    @pytest.mark.parametrize("models", [(), ("a", "a"), ("",), ("a,b",), (" a",), ("a\n",)])
    def test_bad_model_lists_are_refused(self, models: tuple[str, ...]) -> None:
        with pytest.raises(UserError):
            Limits(models=models)

    def test_parse_models_and_with_limits(self) -> None:
        assert parse_models("a, b") == ("a", "b")
        limits = with_limits(Limits(streams=2), {"models": ("a",), "streams": None})
        assert limits == Limits(models=("a",))
        with pytest.raises(UserError, match="no such limit"):
            with_limits(limits, {"budget": 1})


class TestUsersAndSecrets:
    def test_ids_are_random_and_never_the_owner(self) -> None:
        ids = {new_user_id() for _ in range(200)}
        assert len(ids) == 200 and OWNER not in ids and all(is_user_id(i) for i in ids)

    def test_a_new_user_is_named_normalised_at_generation_one(self) -> None:
        user = new_user("Ann", Limits(), 1000.0)
        assert (user.name, user.generation, user.created) == ("ann", 1, 1000.0)

    def test_a_user_record_holds_its_invariants(self) -> None:
        with pytest.raises(UserError):
            User(id="local", name="ann", limits=Limits(), created=0.0)
        with pytest.raises(UserError):
            User(id=new_user_id(), name="Ann", limits=Limits(), created=0.0)

    def test_secrets_are_256_bits_prefixed_and_stored_as_digests(self) -> None:
        made = new_secrets()
        login, key = made.records()
        assert made.login_token.startswith("ldt_") and made.api_key.startswith("ldk_")
        assert len(made.login_token) == len(made.api_key) == 4 + 43
        assert (login.kind, key.kind) == (LOGIN, API_KEY)
        assert login.digest == hashlib.sha256(made.login_token.encode()).hexdigest()
        assert login.fingerprint == login.digest[:8]
        assert made.login_token not in repr(made.records())
        assert new_secrets() != made

    def test_only_prefixed_values_are_looked_up(self) -> None:
        made = new_secrets()
        assert looks_like_user_secret(made.login_token) and looks_like_user_secret(made.api_key)
        assert not looks_like_user_secret("test-access-token-0123456789")
        assert not looks_like_user_secret("ldk_" + "x" * 300)
        assert (secret_kind(made.login_token), secret_kind(made.api_key)) == (LOGIN, API_KEY)


class TestSessions:
    def test_a_session_names_the_user_and_generation(self) -> None:
        user = new_user("ann", Limits(), 0.0)
        assert parse_session_subject(session_subject(user)) == (user.id, 1)

    @pytest.mark.parametrize("subject", [OWNER, "u-abc#1", "ann#1", "", "#", "u-aaaaaaaaaaaaaaaa#",
                                         "u-aaaaaaaaaaaaaaaa#x"])
    def test_anything_else_is_not_a_user_session(self, subject: str) -> None:
        assert parse_session_subject(subject) is None
