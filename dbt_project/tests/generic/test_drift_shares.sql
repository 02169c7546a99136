{#
    `drift_shares_add_up`: in each group of rows (`group_by`, a list of columns) the column's
    shares add up to 1 (within 1e-9); a group whose shares are all null (a build without rows)
    is left alone. Returns the groups that do not.
#}
{% test drift_shares_add_up(model, column_name, group_by) %}

{%- set columns = group_by | join(', ') %}

select
    {{ columns }},
    sum({{ column_name }}) as total_share

from {{ model }}
group by {{ columns }}
having
    count({{ column_name }}) > 0
    and abs(sum({{ column_name }}) - 1.0) > 1e-9

{% endtest %}
