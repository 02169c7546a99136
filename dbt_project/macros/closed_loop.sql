{#
    The closed loop's helpers: attribution windows, the price property, the experiments' vars
    rendered as rows, and the normal and chi-squared tail probabilities the experiment models
    need, in plain arithmetic (exp, sqrt, power) that every engine has.
#}

{# A name the API accepts for an experiment or variant (the contract's pattern). #}
{% macro _check_loop_name(var_name, text) -%}
    {%- if not modules.re.match('^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$', text | string) -%}
        {{- exceptions.raise_compiler_error(
            var_name ~ ": '" ~ text ~ "' is not an experiment or variant name "
            ~ "(letters, digits, '_', '.', '-'; at most 64)"
        ) -}}
    {%- endif -%}
{%- endmacro %}


{% macro _check_number(var_name, value) -%}
    {%- if value is not number or value is boolean or value < 0 -%}
        {{- exceptions.raise_compiler_error(
            var_name ~ ": '" ~ value ~ "' should be a number, 0 or more"
        ) -}}
    {%- endif -%}
{%- endmacro %}


{#
    Seconds after an impression during which an event of the type in `column` counts as its
    outcome (var attribution_window_minutes); other event types never do (-1).
#}
{% macro attribution_window_seconds(column) -%}
    {%- set windows = var('attribution_window_minutes') -%}
    case {{ column }}
        {%- for event_type in ['view', 'addtocart', 'transaction'] %}
        {%- do _check_number('attribution_window_minutes.' ~ event_type, windows.get(event_type)) %}
        when '{{ event_type }}' then {{ windows[event_type] * 60 }}
        {%- endfor %}
        else -1
    end
{%- endmacro %}


{# The item property holding prices (var price_property), as a SQL string literal. #}
{% macro price_property() -%}
    {%- set name = var('price_property') | string -%}
    {%- if not modules.re.match('^[A-Za-z0-9_]+$', name) -%}
        {{- exceptions.raise_compiler_error(
            "price_property: '" ~ name ~ "' should be a property name (letters, digits, '_')"
        ) -}}
    {%- endif -%}
    '{{ name }}'
{%- endmacro %}


{# Rows (experiment, variant) of var experiment_controls; none when it is empty. #}
{% macro experiment_controls_rows() -%}
    {%- set controls = var('experiment_controls') or {} -%}
    {%- if controls is not mapping -%}
        {{- exceptions.raise_compiler_error("experiment_controls: expected {experiment: variant}") -}}
    {%- endif -%}
    {%- for experiment, variant in controls.items() %}
        {%- do _check_loop_name('experiment_controls', experiment) -%}
        {%- do _check_loop_name('experiment_controls.' ~ experiment, variant) %}
    select
        cast('{{ experiment }}' as {{ dbt.type_string() }}) as experiment,
        cast('{{ variant }}' as {{ dbt.type_string() }}) as variant
    {%- if not loop.last %}
    union all
    {%- endif -%}
    {%- else %}
    select
        cast(null as {{ dbt.type_string() }}) as experiment,
        cast(null as {{ dbt.type_string() }}) as variant
    where 1 = 0
    {%- endfor %}
{%- endmacro %}


{# Rows (experiment, variant, weight) of var experiment_weights; none when it is empty. #}
{% macro experiment_weights_rows() -%}
    {%- set weights = var('experiment_weights') or {} -%}
    {%- set rows = [] -%}
    {%- if weights is not mapping -%}
        {{- exceptions.raise_compiler_error(
            "experiment_weights: expected {experiment: {variant: weight}}"
        ) -}}
    {%- endif -%}
    {%- for experiment, variants in weights.items() -%}
        {%- do _check_loop_name('experiment_weights', experiment) -%}
        {%- if variants is not mapping or not variants -%}
            {{- exceptions.raise_compiler_error(
                "experiment_weights." ~ experiment ~ ": expected {variant: weight}"
            ) -}}
        {%- endif -%}
        {%- for variant, weight in variants.items() -%}
            {%- do _check_loop_name('experiment_weights.' ~ experiment, variant) -%}
            {%- do _check_number('experiment_weights.' ~ experiment ~ '.' ~ variant, weight) -%}
            {%- do rows.append((experiment, variant, weight)) -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- for experiment, variant, weight in rows %}
    select
        cast('{{ experiment }}' as {{ dbt.type_string() }}) as experiment,
        cast('{{ variant }}' as {{ dbt.type_string() }}) as variant,
        cast({{ weight }} as double) as weight
    {%- if not loop.last %}
    union all
    {%- endif -%}
    {%- else %}
    select
        cast(null as {{ dbt.type_string() }}) as experiment,
        cast(null as {{ dbt.type_string() }}) as variant,
        cast(null as double) as weight
    where 1 = 0
    {%- endfor %}
{%- endmacro %}


{#
    erfc(u) for u >= 0 by Abramowitz & Stegun 7.1.26: absolute error below 1.5e-7 (so normal
    probabilities from it are within 1.5e-7, plenty for p-values compared with 0.05 or 0.001,
    not for p-values of 1e-9, which it returns as 0 or a few 1e-8).
#}
{% macro erfc_nonnegative(u) -%}
    (
        (1.0 / (1.0 + 0.3275911 * ({{ u }})))
        * (0.254829592 + (1.0 / (1.0 + 0.3275911 * ({{ u }})))
        * (-0.284496736 + (1.0 / (1.0 + 0.3275911 * ({{ u }})))
        * (1.421413741 + (1.0 / (1.0 + 0.3275911 * ({{ u }})))
        * (-1.453152027 + (1.0 / (1.0 + 0.3275911 * ({{ u }}))) * 1.061405429))))
        * exp(-({{ u }}) * ({{ u }}))
    )
{%- endmacro %}


{# P(Z > z) for a standard normal Z. #}
{% macro normal_survival(z) -%}
    case
        when ({{ z }}) >= 0 then 0.5 * {{ erfc_nonnegative('(' ~ z ~ ') / sqrt(2.0)') }}
        else 1.0 - 0.5 * {{ erfc_nonnegative('-(' ~ z ~ ') / sqrt(2.0)') }}
    end
{%- endmacro %}


{# P(|Z| >= |z|) for a standard normal Z: the two-sided p-value of a z statistic. #}
{% macro two_sided_normal_p_value(z) -%}
    case
        when ({{ z }}) is not null then least(1.0, {{ erfc_nonnegative('abs(' ~ z ~ ') / sqrt(2.0)') }})
    end
{%- endmacro %}


{#
    P(X >= x) for X chi-squared with `df` degrees of freedom: exact for df 1 (erfc of
    sqrt(x / 2), to erfc's 1.5e-7) and df 2 (exp(-x / 2)); Wilson & Hilferty's cube-root normal
    approximation beyond: for df 3..9 within 0.003 of the exact tail everywhere, and where the
    exact tail is 0.001 it gives 0.00107 (df 9) to 0.00113 (df 3): a little conservative right
    at the sample-ratio threshold (checked against scipy.stats.chi2).
#}
{% macro chi_squared_survival(x, df) -%}
    case
        when ({{ df }}) = 1 then {{ erfc_nonnegative('sqrt((' ~ x ~ ') / 2.0)') }}
        when ({{ df }}) = 2 then exp(-({{ x }}) / 2.0)
        when ({{ df }}) > 2 then {{ normal_survival(
            '(power((' ~ x ~ ') / (' ~ df ~ '), 1.0e0 / 3) - (1.0 - 2.0e0 / (9.0 * (' ~ df ~ '))))'
            ~ ' / sqrt(2.0e0 / (9.0 * (' ~ df ~ ')))'
        ) }}
    end
{%- endmacro %}


{# The 97.5% quantile of the standard normal: 95% two-sided intervals are estimate +- z * se. #}
{% macro z_95() -%}
    1.959963984540054
{%- endmacro %}


{#
    Each element of a list column as its own row (in a select list, aliased by the caller).
    Struct fields of the element are then read as `<alias>.<field>` on both engines.
#}
{% macro explode_list(column) -%}
    {{- return(adapter.dispatch('explode_list', 'recsys')(column)) -}}
{%- endmacro %}

{% macro default__explode_list(column) -%}
    explode({{ column }})
{%- endmacro %}

{% macro duckdb__explode_list(column) -%}
    unnest({{ column }})
{%- endmacro %}
