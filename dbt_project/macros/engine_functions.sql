{#
    The few functions whose spelling differs between engines. Models call these macros, never the
    DuckDB function directly, so that the same models can run on another adapter by adding a
    `<adapter>__` implementation here (DESIGN: "isolate DuckDB-only syntax in macros").
    `default__` versions use what Spark SQL and Trino / Athena understand.
#}

{# Epoch milliseconds (BIGINT) to a TIMESTAMP in UTC. #}
{% macro epoch_ms_to_timestamp(column) -%}
    {{- return(adapter.dispatch('epoch_ms_to_timestamp', 'recsys')(column)) -}}
{%- endmacro %}

{% macro default__epoch_ms_to_timestamp(column) -%}
    {{ dbt.dateadd('millisecond', column, "cast('1970-01-01 00:00:00' as " ~ dbt.type_timestamp() ~ ")") }}
{%- endmacro %}

{% macro spark__epoch_ms_to_timestamp(column) -%}
    timestamp_millis(cast({{ column }} as bigint))
{%- endmacro %}

{% macro duckdb__epoch_ms_to_timestamp(column) -%}
    epoch_ms(cast({{ column }} as bigint))
{%- endmacro %}


{# Seconds (fractional) from one timestamp to a later one. #}
{% macro seconds_between(start_at, end_at) -%}
    {{- return(adapter.dispatch('seconds_between', 'recsys')(start_at, end_at)) -}}
{%- endmacro %}

{% macro default__seconds_between(start_at, end_at) -%}
    ({{ dbt.datediff(start_at, end_at, 'millisecond') }} / 1000.0)
{%- endmacro %}

{% macro spark__seconds_between(start_at, end_at) -%}
    ((unix_micros({{ end_at }}) - unix_micros({{ start_at }})) / 1000000.0)
{%- endmacro %}

{% macro duckdb__seconds_between(start_at, end_at) -%}
    (epoch({{ end_at }}) - epoch({{ start_at }}))
{%- endmacro %}


{#
    Value of `value` on the row with the largest `order_by` (an aggregate). On DuckDB, ties on
    `order_by` go to the largest value, so that a rebuild always picks the same row.
#}
{% macro arg_max(value, order_by) -%}
    {{- return(adapter.dispatch('arg_max', 'recsys')(value, order_by)) -}}
{%- endmacro %}

{% macro default__arg_max(value, order_by) -%}
    max_by({{ value }}, {{ order_by }})
{%- endmacro %}

{% macro duckdb__arg_max(value, order_by) -%}
    arg_max({{ value }}, ({{ order_by }}, {{ value }}))
{%- endmacro %}


{#
    First number written as an `n`-prefixed token in a RetailRocket property value, as a double:
    'n552.000 639502 n720.000 424566' -> 552.0; a value without such a token -> null.
    Other tokens are hashed words and never start with `n`.
#}
{% macro first_numeric_token(column) -%}
    {{- return(adapter.dispatch('first_numeric_token', 'recsys')(column)) -}}
{%- endmacro %}

{% macro default__first_numeric_token(column) -%}
    {{ dbt.safe_cast(
        "nullif(regexp_extract(" ~ column ~ ", '(^| )n(-?[0-9]+([.][0-9]+)?)( |$)', 2), '')",
        "double"
    ) }}
{%- endmacro %}

{% macro duckdb__first_numeric_token(column) -%}
    try_cast(nullif(regexp_extract({{ column }}, '(^| )n(-?[0-9]+([.][0-9]+)?)( |$)', 2), '') as double)
{%- endmacro %}


{#
    md5 surrogate key of several columns (what dbt_utils.generate_surrogate_key does, which is not
    available offline): columns cast to text, nulls spelled '_null_', joined with '-'.
#}
{% macro surrogate_key(columns) -%}
    {%- set parts = [] -%}
    {%- for column in columns -%}
        {%- do parts.append(
            "coalesce(cast(" ~ column ~ " as " ~ dbt.type_string() ~ "), '_null_')"
        ) -%}
        {%- if not loop.last -%}
            {%- do parts.append("'-'") -%}
        {%- endif -%}
    {%- endfor -%}
    {{ dbt.hash(dbt.concat(parts)) }}
{%- endmacro %}
