{#
    Drift as dbt tests. `no_drift_status`: the rows of a drift model (drift_features,
    drift_mixes: one row per check, with a `status` column) whose status is `status` ('warn' or
    'fail'). The drift models' ymls configure it with `severity: warn`, so that `dbt build`
    prints each failing check's count as a warning (WARN n no_drift_status_drift_features_fail)
    without stopping the build: drift is a finding about the data, not a broken build; the
    monitoring service and the retraining policy act on it.
#}
{% test no_drift_status(model, status) %}

{%- if status not in ('warn', 'fail') -%}
    {{- exceptions.raise_compiler_error(
        "no_drift_status: status should be 'warn' or 'fail', got '" ~ status ~ "'"
    ) -}}
{%- endif %}

select *
from {{ model }}
where status = '{{ status }}'

{% endtest %}
