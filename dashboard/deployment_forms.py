"""The deployment page's own forms: the one that confirms a deletion by its name, and its routing
(surface mode, server, fallbacks)."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from deployments.models import MAX_FALLBACKS, Deployment, SurfaceMode

from .forms import SERVED_BY_HELP, servers_for


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


class RoutingForm(forms.Form):
    """A deployment's surface mode, its server (`served_by`) and its fallbacks in the order they are
    tried (one select per place). The rules are the model layer's (Deployment.clean_served_by,
    clean_fallbacks); this form only offers the deployments that can pass them."""

    surface_mode = forms.ChoiceField(choices=SurfaceMode.choices, label="Surfaces")
    served_by = forms.ModelChoiceField(
        queryset=Deployment.objects.none(),
        required=False,
        label="Served by",
        empty_label="Its own connectors",
        help_text=SERVED_BY_HELP,
    )

    def __init__(self, *args, deployment: Deployment, **kwargs):
        super().__init__(*args, **kwargs)
        self.deployment = deployment
        self.fields["served_by"].queryset = servers_for(deployment.org, deployment)
        usable = Deployment.objects.usable_by(deployment.org).exclude(pk=deployment.pk).order_by("name")
        for place in range(1, MAX_FALLBACKS + 1):
            self.fields[f"fallback_{place}"] = forms.ModelChoiceField(
                queryset=usable,
                required=False,
                label=f"Fallback {place}",
                empty_label="—",
                help_text="Tried in this order when the model is offline or its queue is full, for keys "
                "with “Use fallbacks”: your deployments and those shared with you."
                if place == 1
                else "",
            )

    @classmethod
    def for_deployment(cls, deployment: Deployment, data=None) -> RoutingForm:
        fallbacks = [link.fallback for link in deployment.fallback_links.select_related("fallback")]
        initial = {"surface_mode": deployment.surface_mode, "served_by": deployment.served_by_id}
        initial.update({f"fallback_{place}": d.pk for place, d in enumerate(fallbacks, start=1)})
        return cls(data, deployment=deployment, initial=initial)

    def clean(self):
        data = super().clean()
        chosen = [data.get(f"fallback_{place}") for place in range(1, MAX_FALLBACKS + 1)]
        fallbacks = [d for d in chosen if d is not None]
        if len({d.pk for d in fallbacks}) != len(fallbacks):
            raise forms.ValidationError("Each fallback may be listed once.")
        data["fallbacks"] = fallbacks
        return data

    def changes(self) -> dict:
        """For deployments.actions.update_deployment."""
        data = self.cleaned_data
        return {"surface_mode": data["surface_mode"], "served_by": data["served_by"], "fallbacks": data["fallbacks"]}


def add_model_errors(form: forms.Form, exc: ValidationError, field: str | None = None) -> None:
    """A model layer's ValidationError on the form: by field where it names one the form has, else on
    `field` (None: the form as a whole)."""
    if not hasattr(exc, "error_dict"):
        form.add_error(field, exc)
        return
    for name, errors in exc.error_dict.items():
        form.add_error(name if name in form.fields else field, errors)
