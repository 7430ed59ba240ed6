"""`/api/orgs/<org>/usage/breakdown/`: usage by model or by key, the top N with the rest as "other",
filtered like `usage/` (the same form: billing.forms.UsageFilterForm). Members may read it."""

from __future__ import annotations

from django import forms
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.breakdown import By, usage_breakdown
from billing.forms import MAX_TOP, UsageFilterForm

from .serializers import UsageTotalsSerializer
from .views import ORG_PARAM, OrgScoped, UsageQuery


class BreakdownForm(UsageFilterForm):
    by = forms.ChoiceField(choices=By.choices, required=False)


class BreakdownQuery(UsageQuery):
    by = serializers.ChoiceField(choices=By.choices, required=False, help_text="model (default) or key.")
    top = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_TOP, help_text="Rows before the rest become “other” (default 10)."
    )


class BreakdownRowSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True, help_text="The deployment's or key's id; null for none or other.")
    label = serializers.CharField(help_text="The model's or key's name; “Other” for the rest.")
    prefix = serializers.CharField(help_text="A key's display prefix; empty for models.")
    other = serializers.BooleanField(help_text="Whether this row sums every model or key beyond the top N.")
    members = serializers.IntegerField(help_text="How many models or keys the row stands for.")
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_micros = serializers.IntegerField()
    share = serializers.DecimalField(max_digits=4, decimal_places=1, help_text="Percent of `share_of`'s total.")


class BreakdownSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    narrowed_from = serializers.DateField(allow_null=True)
    period = serializers.ChoiceField(choices=["day", "hour"])
    by = serializers.ChoiceField(choices=By.choices)
    top = serializers.IntegerField()
    share_of = serializers.ChoiceField(choices=["cost", "tokens", "requests"])
    totals = UsageTotalsSerializer()
    rows = BreakdownRowSerializer(many=True)


class UsageBreakdownView(OrgScoped, APIView):
    """Usage per model (`by=model`) or per API key (`by=key`), largest cost first (then tokens, then
    requests), the top `top` and one "other" row for the rest. Members may read it."""

    manage = False

    @extend_schema(parameters=[ORG_PARAM, BreakdownQuery], responses=BreakdownSerializer)
    def get(self, request: Request, org: str) -> Response:
        form = BreakdownForm(request.query_params, org=self.org, today=timezone.now().date())
        if not form.is_valid():
            raise ValidationError(form.errors.get_json_data())
        query = form.query()
        top = form.cleaned_data["top"]
        by = form.cleaned_data.get("by") or By.MODEL
        breakdown = usage_breakdown(self.org, by=by, top=top, **query)
        body = {
            "start": form.cleaned_data["start"],
            "end": form.cleaned_data["end"],
            "narrowed_from": form.narrowed_from,
            "period": query["period"],
            "by": breakdown.by,
            "top": top,
            "share_of": breakdown.share_of,
            "totals": breakdown.totals,
            "rows": [row.as_dict() for row in breakdown.rows],
        }
        return Response(BreakdownSerializer(body).data)
