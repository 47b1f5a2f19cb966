from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.base_user import BaseUserManager
from django.contrib.auth.forms import UserCreationForm

EMAIL_HELP = (
    "Only to send you a link if you forget your password; never shown to anyone. It is yours "
    "once you open the link we send to it."
)


class SignUpForm(UserCreationForm):
    """Django's account form, with an e-mail address to reset a forgotten password (optional,
    and only asked while resetting by e-mail is on)."""

    class Meta(UserCreationForm.Meta):
        fields = ("username", "email")
        labels = {"email": "E-mail address (optional)"}
        help_texts = {"email": EMAIL_HELP}
        widgets = {"email": forms.EmailInput(attrs={"autocomplete": "email"})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not settings.CHAT_PASSWORD_RESET:
            del self.fields["email"]

    def clean_email(self) -> str:
        return BaseUserManager.normalize_email(self.cleaned_data["email"])

    def save(self, commit: bool = True) -> Any:
        """The account, without the address: it becomes the account's once confirmed."""
        user = super().save(commit=False)
        user.email = ""
        if commit:
            user.save()
        return user


class PasswordConfirmedForm(forms.Form):
    """A change to the account that asks for its password first, as changing the password does."""

    password = forms.CharField(
        label="Your password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    def __init__(self, user: Any, *args: Any, **kwargs: Any) -> None:
        self.user = user
        super().__init__(*args, **kwargs)

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        if not self.user.check_password(password):
            raise forms.ValidationError("That is not your password.", code="password_incorrect")
        return password


class AccountDeleteForm(PasswordConfirmedForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["password"].widget.attrs["autofocus"] = True


class AccountEmailForm(PasswordConfirmedForm):
    """The address a forgotten password's link goes to; left empty, the account has none."""

    email = forms.EmailField(
        label="E-mail address",
        required=False,
        help_text=EMAIL_HELP,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )
    field_order = ["email", "password"]

    def clean_email(self) -> str:
        return BaseUserManager.normalize_email(self.cleaned_data["email"])
