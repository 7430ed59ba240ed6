"""Create forms that make their object once (accounts.once): the form half.

`OneTimeForm` carries the page's one-time token in a hidden field; a form built on it leaves the
token out of `cleaned_data` (it is `form.token` instead), so a view passes `cleaned_data` on as
before. A submission without a well-formed token (a page from before an upgrade, a hand-made POST)
is refused with a message and the form comes back with a fresh token, so submitting it again works.
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from accounts.once import TOKEN_RE, new_form_token

from .forms import ApiKeyForm, ConnectorTokenForm, DeploymentForm

STALE_TOKEN = "This form had expired, so nothing was created. Check the values and submit it again."


class OneTimeForm(forms.Form):
    form_token = forms.CharField(widget=forms.HiddenInput, required=False, max_length=64)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.token = ""
        self.token_stale = False
        name = self.add_prefix("form_token")
        if not self.is_bound:
            self.fields["form_token"].initial = new_form_token()
        elif not TOKEN_RE.fullmatch(str(self.data.get(name, ""))):
            self.token_stale = True
            self.data = self.data.copy()
            self.data[name] = new_form_token()

    def clean(self):
        data = super().clean()
        if self.token_stale:
            raise ValidationError(STALE_TOKEN)
        self.token = data.pop("form_token", "") or ""
        return data


class ApiKeyCreateForm(OneTimeForm, ApiKeyForm):
    pass


class ConnectorTokenCreateForm(OneTimeForm, ConnectorTokenForm):
    pass


class DeploymentCreateForm(OneTimeForm, DeploymentForm):
    pass
