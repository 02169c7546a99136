{#
    No hour of an event-volume model has status 'fail' (its count beyond the fail bounds of
    its baseline). Returns the failing hours, so that `dbt build` names how many there are;
    used with severity warn: an unusual hour is news, not a reason to stop the build.
#}
{% test volume_not_failing(model, column_name) %}

select *
from {{ model }}
where {{ column_name }} = 'fail'

{% endtest %}
