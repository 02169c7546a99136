{#
    The columns together identify a row (a composite primary key). dbt_utils has this test but
    packages cannot be installed offline, so it lives here.
#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

{%- set columns = combination_of_columns | join(', ') %}

select
    {{ columns }},
    count(*) as n_rows

from {{ model }}
group by {{ columns }}
having count(*) > 1

{% endtest %}
