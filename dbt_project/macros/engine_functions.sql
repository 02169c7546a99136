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


{#
    dbt's dateadd on Spark, for the fixed-length parts the models use (week to microsecond),
    keeping the microseconds: dbt-spark's goes through unix seconds and drops the fraction
    (and rounds a millisecond step to nothing). A root-project spark__dateadd takes precedence
    over the adapter's for every dbt.dateadd() call.
#}
{% macro spark__dateadd(datepart, interval, from_date_or_timestamp) -%}
    {%- set micros = {
        'week': 604800000000, 'day': 86400000000, 'hour': 3600000000, 'minute': 60000000,
        'second': 1000000, 'millisecond': 1000, 'microsecond': 1,
    } -%}
    {%- if datepart not in micros -%}
        {{- exceptions.raise_compiler_error(
            "dateadd: '" ~ datepart ~ "' is not implemented on Spark (fixed-length parts only: "
            ~ micros.keys() | join(', ') ~ ")"
        ) -}}
    {%- endif -%}
    timestamp_micros(
        unix_micros(cast({{ from_date_or_timestamp }} as timestamp))
        + cast(({{ interval }}) as bigint) * {{ micros[datepart] }}
    )
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


{#
    A double as text, the same on every engine (cast(double as text) is not: DuckDB writes
    1e+20 and 10000000.0, Spark 1.0E20 and 1.0E7): rounded to 6 decimals, no exponent, trailing
    zeros dropped: 0.5 -> '0.5', 10000000 -> '10000000', 1/3 -> '0.333333'.
#}
{% macro number_label(column) -%}
    regexp_replace(
        regexp_replace(cast(cast({{ column }} as decimal(38, 6)) as {{ dbt.type_string() }}), '0+$', ''),
        '[.]$', ''
    )
{%- endmacro %}


{#
    Numbers, a rule rather than a macro: a decimal literal (1.0, 0.0001) is a DECIMAL on Spark,
    and Spark keeps as few as 6 digits after a division of decimals, where DuckDB divides in
    double. A ratio the models compute is therefore taken in double on every engine:
    cast(n as double) / m, or a literal written as a double (1.0e0, 1.0e-4).
#}


{#
    dbt's listagg on Spark, honouring `order by <expression> [asc|desc]` (dbt-spark's ignores
    it, with a warning): the values are sorted with their keys, then joined. Like DuckDB's
    string_agg, nulls are left out and no value at all gives null (not '').
#}
{% macro spark__listagg(measure, delimiter_text, order_by_clause, limit_num) -%}
    {%- set clause = (order_by_clause or '') | trim -%}
    {%- if clause and not clause.lower().startswith('order by ') -%}
        {{- exceptions.raise_compiler_error("listagg on Spark: cannot read the order " ~ clause) -}}
    {%- endif -%}
    {%- set key = clause[9:] | trim -%}
    {%- set descending = key.lower().endswith(' desc') -%}
    {%- if descending or key.lower().endswith(' asc') -%}
        {%- set key = key.rsplit(' ', 1)[0] | trim -%}
    {%- endif -%}
    {%- if ',' in key -%}
        {{- exceptions.raise_compiler_error("listagg on Spark: one order key only, found " ~ key) -}}
    {%- endif -%}
    {%- if key -%}
        {%- set values -%}
            transform(
                array_sort(collect_list(case when ({{ measure }}) is not null then struct({{ key }} as sort_key, {{ measure }} as value) end)),
                entry -> entry.value
            )
        {%- endset -%}
        {%- if descending -%}
            {%- set values = 'reverse(' ~ values ~ ')' -%}
        {%- endif -%}
    {%- else -%}
        {%- set values = 'collect_list(' ~ measure ~ ')' -%}
    {%- endif -%}
    {%- if limit_num -%}
        {%- set values = 'slice(' ~ values ~ ', 1, ' ~ limit_num ~ ')' -%}
    {%- endif -%}
    nullif(array_join({{ values }}, {{ delimiter_text }}), '')
{%- endmacro %}
