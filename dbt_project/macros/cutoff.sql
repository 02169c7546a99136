{#
    The point in time of every feature (var `cutoff_at`) and the version of the feature marts
    built as of it (var `feature_version`).

    cutoff_at unset (null) means the latest event in the lake: it is then read from the events
    source when dbt executes. At parse time (`execute` false) a placeholder stands in; it never
    reaches a built table.
#}

{% macro cutoff_datetime() -%}
    {#- The cutoff as a naive UTC datetime, or none at parse time when it comes from the data. -#}
    {%- set configured = var('cutoff_at', none) -%}
    {%- if configured is not none and (configured | string | trim) != '' -%}
        {{- return(parse_utc_datetime(configured | string | trim)) -}}
    {%- endif -%}
    {#- Called at parse time too, so that every caller depends on the events source. -#}
    {%- set events_relation = source('retailrocket', 'events') -%}
    {%- if not execute -%}
        {{- return(none) -}}
    {%- endif -%}
    {%- set latest_query -%}
        select max(timestamp) as latest_event_ms from {{ events_relation }}
    {%- endset -%}
    {%- set latest_ms = run_query(latest_query).columns[0].values()[0] -%}
    {%- if latest_ms is none -%}
        {{- exceptions.raise_compiler_error(
            "cutoff_at: the events source is empty, so there is no latest event to default to; "
            ~ "set the var cutoff_at or load events first"
        ) -}}
    {%- endif -%}
    {{- return(
        modules.datetime.datetime(1970, 1, 1)
        + modules.datetime.timedelta(milliseconds=(latest_ms | int))
    ) -}}
{%- endmacro %}


{% macro parse_utc_datetime(text) -%}
    {#- ISO 8601 date or timestamp, optionally with an offset, to a naive UTC datetime. -#}
    {%- set pattern = '^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:?\d{2})?$' -%}
    {%- if not modules.re.match(pattern, text) -%}
        {{- exceptions.raise_compiler_error(
            "cutoff_at: '" ~ text ~ "' is not an ISO timestamp such as '2015-07-01 00:00:00'"
        ) -}}
    {%- endif -%}
    {%- set parsed = modules.datetime.datetime.fromisoformat(text.replace('Z', '+00:00')) -%}
    {%- if parsed.tzinfo is not none -%}
        {%- set parsed = parsed.astimezone(modules.pytz.utc).replace(tzinfo=none) -%}
    {%- endif -%}
    {{- return(parsed) -}}
{%- endmacro %}


{% macro cutoff_at() -%}
    {#- The cutoff as a SQL timestamp literal (UTC, millisecond precision). -#}
    {%- set cutoff = cutoff_datetime() -%}
    {%- if cutoff is none -%}
        {%- set text = '1970-01-01 00:00:00.000' -%}
    {%- else -%}
        {%- set text = cutoff.strftime('%Y-%m-%d %H:%M:%S.') ~ ('%03d' | format(cutoff.microsecond // 1000)) -%}
    {%- endif -%}
    {{- return("cast('" ~ text ~ "' as " ~ dbt.type_timestamp() ~ ")") -}}
{%- endmacro %}


{% macro feature_version() -%}
    {#- Var feature_version, else e.g. fv1_20150918T025947 (schema version + cutoff). -#}
    {%- set configured = var('feature_version', none) -%}
    {%- if configured is not none and (configured | string | trim) != '' -%}
        {%- set version = configured | string | trim -%}
        {%- if not modules.re.match('^[A-Za-z0-9][A-Za-z0-9_.-]*$', version) -%}
            {{- exceptions.raise_compiler_error(
                "feature_version: '" ~ version ~ "' must be letters, digits, '_', '.' or '-' "
                ~ "(it names a folder of the lake)"
            ) -}}
        {%- endif -%}
        {{- return(version) -}}
    {%- endif -%}
    {%- set cutoff = cutoff_datetime() -%}
    {%- if cutoff is none -%}
        {{- return(var('feature_schema_version') ~ '_unresolved') -}}
    {%- endif -%}
    {{- return(var('feature_schema_version') ~ '_' ~ cutoff.strftime('%Y%m%dT%H%M%S')) -}}
{%- endmacro %}
