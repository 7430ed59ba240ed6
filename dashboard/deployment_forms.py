"""The form that confirms a deployment's deletion by its name."""

from __future__ import annotations

from django import forms


class DeleteDeploymentForm(forms.Form):
    confirm_name = forms.CharField(
        label="Type the deployment's name to confirm",
        max_length=64,
        strip=True,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "none"}),
    )

    def __init__(self, *args, name: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = name

    def clean_confirm_name(self) -> str:
        value = self.cleaned_data["confirm_name"]
        if value != self.name:
            raise forms.ValidationError(f"Type {self.name} exactly to delete it.")
        return value
