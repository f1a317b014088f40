"""User request and response schemas."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from service.patch import patch_schema
from service.schemas import FullMatch, IdField, StrictBoolean

USERNAME_MAX = 80  # no account has a longer name, so sign-in refuses longer ones unread
USERNAME = [
    validate.Length(min=3, max=USERNAME_MAX),
    FullMatch(r"^[A-Za-z0-9_.-]+$", error="Use letters, digits, '_', '.' and '-' only."),
]
NAME = validate.Length(max=50)
PASSWORD = validate.Length(min=8, max=1024)  # the sign-up rules, also for a password reset


class BaseUserSchema(Schema):
    id = IdField(attribute="_id", dump_only=True, metadata={"example": "65f0c0ffee0000000000beef"})
    username = fields.String(dump_only=True)
    first_name = fields.String(dump_only=True)
    middle_name = fields.String(dump_only=True)
    last_name = fields.String(dump_only=True)


class MfaStatusSchema(Schema):
    """A user's second factor, as the user and admins see it."""

    totp = fields.Boolean(dump_only=True, metadata={"description": "A confirmed TOTP second factor is active."})
    recovery_codes_left = fields.Integer(dump_only=True, metadata={"description": "Unused recovery codes."})


class _MfaStatusField(fields.Nested):
    """`{"totp", "recovery_codes_left"}` from the stored `mfa` (users.mfa), which holds secrets: only these
    two facts leave it."""

    def get_value(self, obj: Any, attr: str, accessor: Any = None, default: Any = None) -> dict[str, Any]:
        mfa = obj.get("mfa") or {}
        active = bool(mfa.get("active"))
        return {"totp": active, "recovery_codes_left": len(mfa.get("recovery_codes", [])) if active else 0}


class UserSchema(BaseUserSchema):
    email = fields.Email(dump_only=True)
    email_verified = fields.Boolean(
        dump_only=True,
        dump_default=False,
        metadata={"description": "Whether the user opened a verification link mailed to `email`."},
    )
    is_active = fields.Boolean(dump_only=True)
    is_regular_user = fields.Boolean(dump_only=True)
    is_admin = fields.Boolean(dump_only=True)
    created = fields.AwareDateTime(dump_only=True)
    updated = fields.AwareDateTime(dump_only=True)
    mfa = _MfaStatusField(MfaStatusSchema, dump_only=True)


class SignupSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    username = fields.String(required=True, validate=USERNAME, metadata={"example": "jane"})
    email = fields.Email(required=True, validate=validate.Length(max=254), metadata={"example": "jane@example.com"})
    password = fields.String(required=True, load_only=True, validate=PASSWORD, metadata={"example": "correct horse"})
    first_name = fields.String(load_default="", validate=NAME)
    middle_name = fields.String(load_default="", validate=NAME)
    last_name = fields.String(load_default="", validate=NAME)


class EditableUserSchema(Schema):
    """The representation a user PATCH is applied to, re-validated after the patch."""

    first_name = fields.String(required=True, validate=NAME)
    middle_name = fields.String(required=True, validate=NAME)
    last_name = fields.String(required=True, validate=NAME)
    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = fields.String(allow_none=True, validate=validate.Length(min=8, max=1024))
    is_active = StrictBoolean(required=True)
    is_regular_user = StrictBoolean(required=True)
    is_admin = StrictBoolean(required=True)


_NAME_VALUE = {"type": "string", "maxLength": 50}
_BOOLEAN = {"type": "boolean"}
UserPatchOperationSchema = patch_schema(
    "UserPatchOperationSchema",
    {
        "/first_name": _NAME_VALUE,
        "/middle_name": _NAME_VALUE,
        "/last_name": _NAME_VALUE,
        "/email": {"type": "string", "format": "email", "maxLength": 254},
        "/password": {"type": "string", "minLength": 8, "maxLength": 1024},
        "/is_active": _BOOLEAN,
        "/is_regular_user": _BOOLEAN,
        "/is_admin": _BOOLEAN,
        "/current_password": {"type": "string"},
    },
    test_only=("/current_password",),
)


# --- second factor (users.mfa) ------------------------------------------------------------------

CODE = fields.String(
    required=True,
    validate=validate.Length(min=6, max=64),
    metadata={
        "description": "A 6-digit code from the authenticator app, or one of the recovery codes (used up).",
        "example": "123456",
    },
)
CURRENT_PASSWORD = fields.String(
    required=True, load_only=True, validate=validate.Length(min=1, max=1024), metadata={"example": "w"}
)


class EnrollTotpSchema(Schema):
    current_password = CURRENT_PASSWORD


class TotpCodeSchema(Schema):
    code = CODE


class RemoveTotpSchema(Schema):
    current_password = CURRENT_PASSWORD
    code = CODE


class TotpEnrollmentSchema(Schema):
    secret = fields.String(metadata={"description": "The base32 secret, for typing into an app by hand."})
    otpauth_uri = fields.String(metadata={"description": "otpauth://totp/... (Key URI format) with the secret."})
    qr_svg = fields.String(metadata={"description": "The otpauth URI as a QR code: an SVG document to scan."})


class RecoveryCodesSchema(Schema):
    recovery_codes = fields.List(
        fields.String(metadata={"example": "abcd-efgh-jkmn-pqrs"}),
        metadata={"description": "Ten single-use codes, shown this once (stored as digests only)."},
    )


# --- email verification and password reset -------------------------------------------------------

MAIL_TOKEN = validate.Length(min=1, max=512)


class MailTokenSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    token = fields.String(
        required=True, validate=MAIL_TOKEN, metadata={"description": "The `token` parameter of the mailed link."}
    )


class PasswordResetRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    email = fields.Email(required=True, validate=validate.Length(max=254), metadata={"example": "jane@example.com"})


class PasswordResetSchema(MailTokenSchema):
    password = fields.String(required=True, load_only=True, validate=PASSWORD, metadata={"example": "correct horse"})


class AcceptedSchema(Schema):
    detail = fields.String(dump_only=True, metadata={"example": "If an account has this address, a link ..."})
